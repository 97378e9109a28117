"""Which differences are real: statistics as plain functions of arrays (stats.py), comparisons of cells (compare.py)."""
