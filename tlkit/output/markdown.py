"""Markdown building blocks of ``report.md``: numbers, parameter lists and tables in one format, so every section
reads alike and a rebuilt report is byte-identical."""
from __future__ import annotations

import json
import math
from typing import Any, Sequence

import pandas as pd

__all__ = ["num", "params_text", "table"]


def num(x: Any, fmt: str = ".4f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA else format(x, fmt)


def params_text(best_params: str) -> str:
    if not best_params:
        return "—"
    items = json.loads(best_params).items()
    return ", ".join(f"{k}={format(v, '.4g') if isinstance(v, float) else v}" for k, v in sorted(items))


def table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1, right: int | None = None) -> list[str]:
    """A Markdown table: the first ``left`` columns (names) left-aligned, numbers right-aligned up to ``right``."""
    right = len(header) if right is None else right
    align = ["---:" if left <= i < right else "---" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |",
            *("| " + " | ".join(r) + " |" for r in rows)]
