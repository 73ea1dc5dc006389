"""One parser for sequence lengths everywhere in the project: ``32k``, ``96K``, ``1m``, ``32768``.

``k`` means 1,024 tokens and ``m`` means 1,048,576, as lengths are quoted in this field
(a "32K context" is 32,768 tokens).
"""

from __future__ import annotations

import re

__all__ = ["format_length", "parse_length", "parse_lengths"]

_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")


def parse_length(text: str | int) -> int:
    """Parse one length: ``"32k"`` -> 32768, ``"1m"`` -> 1048576, ``"4096"`` -> 4096."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _PATTERN.match(str(text))
        if not match:
            raise ValueError(
                f"cannot read {text!r} as a length; write a positive number of tokens, "
                "optionally with k (x1024) or m (x1048576): 32k, 96k, 1m, 32768"
            )
        number, unit = match.groups()
        scaled = float(number) * _UNITS[unit.lower()]
        if scaled != int(scaled):
            raise ValueError(f"length {text!r} is not a whole number of tokens")
        value = int(scaled)
    if value <= 0:
        raise ValueError(f"length {text!r} must be positive")
    return value


def parse_lengths(text: str) -> list[int]:
    """Parse a comma-separated list of lengths: ``"32k,96k"`` -> [32768, 98304]."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ValueError(f"no length in {text!r}; give a comma-separated list such as 32k,96k")
    return [parse_length(p) for p in parts]


def format_length(tokens: int) -> str:
    """Inverse of `parse_length` for round values: 32768 -> ``"32k"``, 1048576 -> ``"1m"``."""
    if tokens % _UNITS["m"] == 0:
        return f"{tokens // _UNITS['m']}m"
    if tokens % _UNITS["k"] == 0:
        return f"{tokens // _UNITS['k']}k"
    return str(tokens)
