"""Numbers as people read them in tables and on axes: 300, 1k, 2.5M."""
from __future__ import annotations

__all__ = ["short_number"]


def short_number(value: float, digits: int = 3) -> str:
    """``value`` with a k, M or G suffix and at most ``digits`` significant digits: 1234567 -> ``1.23M``,
    2500 -> ``2.5k``, 0.5 -> ``0.5``. The plots' log-scale ticks and the strategy plans' parameter counts use it."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g}{suffix}"
    return f"{value:.{digits}g}" if isinstance(value, float) and not float(value).is_integer() else f"{value:g}"
