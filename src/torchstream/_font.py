"""A small built-in bitmap font, so drawing labels needs no font files and no imaging library.

Every printable ASCII character (32..126) is a 5x7 glyph drawn on a 6x8 cell (one blank column
to the right of each glyph, one blank row below for spacing between lines). Characters outside
that range render as ``?``. Rule of thumb: at ``scale=1`` a character is 6 pixels wide and
text stays readable down to about 200-pixel-wide frames; use ``scale=2`` for 1080p and above.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["CELL_HEIGHT", "CELL_WIDTH", "GLYPH_HEIGHT", "GLYPH_WIDTH", "render_text", "text_size"]

GLYPH_WIDTH = 5
GLYPH_HEIGHT = 7
CELL_WIDTH = GLYPH_WIDTH + 1
"""Horizontal advance per character at scale 1, in pixels."""
CELL_HEIGHT = GLYPH_HEIGHT + 1

_FIRST = 32
_LAST = 126

# One entry per character from space (32) to tilde (126). Each is 7 rows, top to bottom, as two
# hex digits; bit 4 of a row is the leftmost of the 5 columns. Lowercase letters with
# descenders (g, j, p, q, y) are raised into the 7 rows, as on character LCDs.
_GLYPHS: tuple[str, ...] = (
    "00000000000000",  # space
    "04040404040004",  # !
    "0a0a0a00000000",  # "
    "0a0a1f0a1f0a0a",  # #
    "040f140e051e04",  # $
    "18190204081303",  # %
    "0c12140815120d",  # &
    "04040800000000",  # '
    "02040808080402",  # (
    "08040202020408",  # )
    "0004150e150400",  # *
    "0004041f040400",  # +
    "000000000c0408",  # ,
    "0000001f000000",  # -
    "00000000000c0c",  # .
    "00010204081000",  # /
    "0e11131519110e",  # 0
    "040c040404040e",  # 1
    "0e11010204081f",  # 2
    "1f02040201110e",  # 3
    "02060a121f0202",  # 4
    "1f101e0101110e",  # 5
    "0608101e11110e",  # 6
    "1f010204080808",  # 7
    "0e11110e11110e",  # 8
    "0e11110f01020c",  # 9
    "000c0c000c0c00",  # :
    "000c0c000c0408",  # ;
    "02040810080402",  # <
    "00001f001f0000",  # =
    "08040201020408",  # >
    "0e110102040004",  # ?
    "0e11010d15150e",  # @
    "0e11111f111111",  # A
    "1e11111e11111e",  # B
    "0e11101010110e",  # C
    "1c12111111121c",  # D
    "1f10101e10101f",  # E
    "1f10101e101010",  # F
    "0e11101711110f",  # G
    "1111111f111111",  # H
    "0e04040404040e",  # I
    "0702020202120c",  # J
    "11121418141211",  # K
    "1010101010101f",  # L
    "111b1515111111",  # M
    "11111915131111",  # N
    "0e11111111110e",  # O
    "1e11111e101010",  # P
    "0e11111115120d",  # Q
    "1e11111e141211",  # R
    "0f10100e01011e",  # S
    "1f040404040404",  # T
    "1111111111110e",  # U
    "11111111110a04",  # V
    "1111111515150a",  # W
    "11110a040a1111",  # X
    "1111110a040404",  # Y
    "1f01020408101f",  # Z
    "0e08080808080e",  # [
    "00100804020100",  # backslash
    "0e02020202020e",  # ]
    "040a1100000000",  # ^
    "0000000000001f",  # _
    "08040200000000",  # `
    "00000e010f110f",  # a
    "1010161911111e",  # b
    "00000e1010110e",  # c
    "01010d1311110f",  # d
    "00000e111f100e",  # e
    "0609081c080808",  # f
    "000f11110f010e",  # g
    "10101619111111",  # h
    "04000c0404040e",  # i
    "0200060202120c",  # j
    "10101214181412",  # k
    "0c04040404040e",  # l
    "00001a15151111",  # m
    "00001619111111",  # n
    "00000e1111110e",  # o
    "00001e111e1010",  # p
    "00000d130f0101",  # q
    "00001619101010",  # r
    "00000e100e011e",  # s
    "08081c08080906",  # t
    "0000111111130d",  # u
    "00001111110a04",  # v
    "0000111115150a",  # w
    "0000110a040a11",  # x
    "000011110f010e",  # y
    "00001f0204081f",  # z
    "02040408040402",  # {
    "04040404040404",  # |
    "08040402040408",  # }
    "00000815020000",  # ~
)


@functools.cache
def _glyph_table() -> torch.Tensor:
    """All glyphs as a bool tensor ``(95, GLYPH_HEIGHT, GLYPH_WIDTH)``, built on first use."""
    rows = torch.tensor(
        [[int(glyph[i : i + 2], 16) for i in range(0, 2 * GLYPH_HEIGHT, 2)] for glyph in _GLYPHS],
        dtype=torch.int32,
    )
    shifts = torch.arange(GLYPH_WIDTH - 1, -1, -1, dtype=torch.int32)
    return ((rows.unsqueeze(-1) >> shifts) & 1).to(torch.bool)


def text_size(text: str, *, scale: int = 1) -> tuple[int, int]:
    """``(height, width)`` in pixels of :func:`render_text`'s mask for ``text``."""
    if len(text) == 0:
        return (GLYPH_HEIGHT * scale, 0)
    return (GLYPH_HEIGHT * scale, (CELL_WIDTH * len(text) - 1) * scale)


@functools.lru_cache(maxsize=1024)
def render_text(text: str, *, scale: int = 1) -> torch.Tensor:
    """Render one line of ``text`` into a CPU bool mask of shape :func:`text_size`.

    True marks ink. Each pixel of the 5x7 glyphs becomes a ``scale`` x ``scale`` block; glyphs
    are one (scaled) column apart and there is no margin around the text. Results are cached
    per ``(text, scale)``, so the returned tensor is shared: never modify it in place (copy or
    ``.to(device)`` it first).
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    if len(text) == 0:
        return torch.zeros((GLYPH_HEIGHT * scale, 0), dtype=torch.bool)
    codes = [ord(c) if _FIRST <= ord(c) <= _LAST else ord("?") for c in text]
    glyphs = _glyph_table()[torch.tensor(codes) - _FIRST]  # (n, 7, 5)
    # Append the blank spacing column to every glyph, lay them side by side, drop the last one.
    cells = torch.nn.functional.pad(glyphs, (0, CELL_WIDTH - GLYPH_WIDTH))
    line = cells.permute(1, 0, 2).reshape(GLYPH_HEIGHT, -1)[:, : CELL_WIDTH * len(codes) - 1]
    if scale > 1:
        line = line.repeat_interleave(scale, dim=0).repeat_interleave(scale, dim=1)
    return line.contiguous()
