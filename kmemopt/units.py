"""Parsing and formatting of byte sizes and counts ("1.5 GiB", "50 MB", "25M", "5%")."""

from __future__ import annotations

import math
import re

from kmemopt.errors import UsageError

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_COUNT_UNITS = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
_NUMBER = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e([+-]?[0-9]+))?\s*([a-zA-Z]*)\s*$")


def _split(text: str, what: str) -> tuple[float, str]:
    match = _NUMBER.match(str(text).replace("_", "").replace(",", ""))
    if not match:
        raise UsageError(f"Cannot read {text!r} as a {what}; write it like '1.5 GiB', '50 MB' or '4096'.")
    number = float(match.group(1)) * (10 ** int(match.group(2)) if match.group(2) else 1)
    return number, match.group(3).lower()


def parse_size(text: str | int | float) -> int:
    """Bytes from '1.5 GiB', '50 MB', '50MB', '4096' (SI and IEC units; a bare number is bytes)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0 or not math.isfinite(text):
            raise UsageError(f"A size must be a non-negative number of bytes. Received: {text!r}.")
        return int(text)
    number, unit = _split(str(text), "size")
    if unit not in _SIZE_UNITS:
        raise UsageError(f"Unknown size unit {unit!r} in {text!r}; use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB.")
    return int(round(number * _SIZE_UNITS[unit]))


def parse_count(text: str | int) -> int:
    """A count from '25M', '1.5B', '300K' or '1000'."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise UsageError(f"A count must be non-negative. Received: {text!r}.")
        return text
    number, unit = _split(str(text), "count")
    if unit not in _COUNT_UNITS:
        raise UsageError(f"Unknown count suffix {unit!r} in {text!r}; use K, M or B (e.g. '25M').")
    return int(round(number * _COUNT_UNITS[unit]))


def parse_percent(text: str | float) -> float:
    """A fraction from '5%' or '0.05'."""
    raw = str(text).strip()
    try:
        if raw.endswith("%"):
            value = float(raw[:-1]) / 100.0
        else:
            value = float(raw)
    except ValueError:
        raise UsageError(f"Cannot read {text!r} as a percentage; write it like '5%'.") from None
    if value < 0 or not math.isfinite(value):
        raise UsageError(f"A percentage must be non-negative. Received: {text!r}.")
    return value


def format_bytes(n: int | float | None, unit: str | None = None) -> str:
    """'12.3 MiB'. IEC units, because memory is allocated in them; `unit` forces one."""
    if n is None:
        return "-"
    sign = "-" if n < 0 else ""
    n = abs(n)
    units = [("B", 1), ("KiB", 1024), ("MiB", 1024**2), ("GiB", 1024**3), ("TiB", 1024**4)]
    if unit is not None:
        factor = dict(units)[unit]
        return f"{sign}{n / factor:,.1f} {unit}" if unit != "B" else f"{sign}{int(n):,} B"
    for name, factor in reversed(units):
        if n >= factor:
            return f"{sign}{n / factor:,.1f} {name}" if factor > 1 else f"{sign}{int(n)} B"
    return f"{sign}0 B"


def format_count(n: int | None) -> str:
    """'25.6M' for parameter counts."""
    if n is None:
        return "-"
    for suffix, factor in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if abs(n) >= factor:
            return f"{n / factor:.1f}{suffix}"
    return str(n)
