"""Numbers as the PLC engineer wrote them."""

from __future__ import annotations

import struct


def shortest_float32(number: float) -> float:
    """The shortest decimal that is the same float32: 725.3, not 725.2999877929688.

    A float32 widened to a double shows digits the PLC never had; consumers compare and
    display the value the PLC engineer typed.
    """
    packed = struct.pack(">f", number)
    for digits in (6, 7, 8, 9):
        candidate = float(f"{number:.{digits}g}")
        if struct.pack(">f", candidate) == packed:
            return candidate
    return number
