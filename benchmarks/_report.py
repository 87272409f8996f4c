"""What every benchmark does with its table: print it, and append it to RESULTS.md on request."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def report(lines: list[str], *, record: bool) -> None:
    """Print the table made of ``lines``; with ``record``, append it to RESULTS.md."""
    table = "\n".join(lines) + "\n"
    print(table)
    if record:
        RESULTS.write_text(RESULTS.read_text() + "\n" + table)
