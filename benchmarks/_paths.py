"""Imported first by every benchmark script: moves this folder to the end of ``sys.path``.

Python puts a script's folder first on ``sys.path``, and this folder holds ``http.py`` (the HTTP
serving benchmark), which would then shadow the standard library's ``http`` package for
everything the script imports (torch imports ``urllib.request`` → ``http.client``). With the
folder last, the standard library wins and ``_report`` and the other helpers still import.
"""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]
