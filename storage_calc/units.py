"""Parse and format byte sizes and counts.

Decimal units are the default, as in the seed (1 KB = 10^3 bytes, 1 GB = 10^9 bytes); binary
units are accepted when spelled with an ``i`` (``KiB``, ``MiB``, ``GiB``, ``TiB``, ``PiB``).
"""

from __future__ import annotations

import math
import re

DECIMAL_UNITS: dict[str, int] = {
    "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15,
}
BINARY_UNITS: dict[str, int] = {
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "PIB": 2**50,
}
#: Canonical spelling of every accepted unit, keyed by its upper-case form.
UNIT_NAMES: dict[str, str] = {
    **{k: k for k in DECIMAL_UNITS},
    **{k: k[0] + "i" + k[2:] for k in BINARY_UNITS},
}
UNITS: dict[str, int] = {**DECIMAL_UNITS, **BINARY_UNITS}

_SIZE_RE = re.compile(r"^\s*([0-9][0-9_,]*\.?[0-9]*(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?)"
                      r"\s*([A-Za-z]*)\s*$")


class UnitError(ValueError):
    """A size or count that cannot be parsed; the message is meant for the user."""


def _number(text: str) -> float:
    try:
        value = float(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise UnitError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise UnitError(f"{text!r} is not a finite number")
    return value


def unit_bytes(unit: str) -> int:
    """Bytes in one ``unit`` (case-insensitive: ``GB``, ``gb``, ``GiB``, ``B``)."""
    key = unit.strip().upper()
    if key not in UNITS:
        raise UnitError(f"unknown unit {unit!r}; use B, KB, MB, GB, TB, PB (decimal) "
                        "or KiB, MiB, GiB, TiB, PiB (binary)")
    return UNITS[key]


def parse_size(text: str | float | int) -> int:
    """Bytes from ``'500KB'``, ``'5 MB'``, ``'1.5GiB'``, ``'1e6'`` (a bare number is bytes)."""
    if isinstance(text, (int, float)):
        value, unit = float(text), "B"
    else:
        if text.strip().startswith("-"):
            raise UnitError(f"size {text.strip()!r} is negative")
        match = _SIZE_RE.match(text)
        if not match:
            raise UnitError(f"{text!r} is not a size; write e.g. 500KB, 5 MB, 1.5GiB")
        value, unit = _number(match.group(1)), match.group(2) or "B"
    if value < 0:
        raise UnitError(f"size {text!r} is negative")
    return int(round(value * unit_bytes(unit)))


def parse_count(text: str | int | float) -> int:
    """A whole, non-negative count from ``'1000000'``, ``'1e6'``, ``'1_000_000'``, ``'1,000,000'``."""
    value = _number(str(text).strip())
    if value < 0:
        raise UnitError(f"count {str(text).strip()!r} is negative")
    if value != int(value):
        raise UnitError(f"count {str(text).strip()!r} is not a whole number")
    return int(value)


def parse_positive(text: str | int | float, what: str = "value") -> float:
    """A number > 0 (``'1.3'``, ``'4'``, ``'1e3'``)."""
    value = _number(str(text).strip())
    if value <= 0:
        raise UnitError(f"{what} {str(text).strip()!r} must be greater than 0")
    return value


def parse_fraction(text: str) -> float:
    """A fraction in (0, 1] from ``'0.4'`` or ``'40%'``."""
    raw = str(text).strip()
    value = _number(raw[:-1]) / 100 if raw.endswith("%") else _number(raw)
    if not 0 < value <= 1:
        raise UnitError(f"utilisation {raw!r} must be in (0, 1] (or 1%..100%)")
    return value


def format_number(value: float) -> str:
    """Short human rendering: ``700.4``, ``0.4``, ``50``, ``1,234.5``, ``0.0004``."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        text = f"{value:,.1f}"
    elif magnitude >= 1:
        text = f"{value:,.2f}"
    else:
        # three significant digits for small values
        digits = max(0, 2 - int(math.floor(math.log10(magnitude))))
        text = f"{value:.{digits}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def best_unit(n_bytes: float, binary: bool = False) -> str:
    """The largest unit in which ``n_bytes`` is at least 1 (decimal unless ``binary``)."""
    table = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"] if binary else list(DECIMAL_UNITS)
    chosen = table[0]
    for name in table:
        if abs(n_bytes) >= UNITS[name.upper()]:
            chosen = name
    return chosen


def format_size(n_bytes: float, unit: str | None = None) -> str:
    """``n_bytes`` in ``unit`` (e.g. ``'GB'`` → ``'700.4 GB'``) or in the best decimal unit."""
    name = UNIT_NAMES[unit.upper()] if unit else best_unit(n_bytes)
    return f"{format_number(n_bytes / UNITS[name.upper()])} {name}"


def format_count(n: float) -> str:
    """A count with thousands separators (``1,000,000``)."""
    return f"{int(round(n)):,}"


def format_duration(seconds: float) -> str:
    """``'8 ms'``, ``'45 s'``, ``'12.5 min'``, ``'1.35 h'``, ``'3.2 days'``, ``'1.4 years'``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{format_number(seconds)} s"
    if seconds < 3600:
        return f"{format_number(seconds / 60)} min"
    if seconds < 2 * 86400:
        return f"{format_number(seconds / 3600)} h"
    if seconds < 2 * 365 * 86400:
        return f"{format_number(seconds / 86400)} days"
    return f"{format_number(seconds / (365 * 86400))} years"


def format_flops(flops: float) -> str:
    """``'4.94e16 FLOPs'`` style, exponent without padding."""
    if flops == 0:
        return "0 FLOPs"
    mantissa, exponent = f"{flops:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)} FLOPs"
