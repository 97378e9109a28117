"""A table of image paths and labels (CSV or Parquet): the shape most in-house datasets already have.

Columns: ``path`` (absolute, or relative to the table's folder), ``label`` (any value; classes sort by their text)
and ``split`` (``train`` or ``test``). Column names can be changed with ``data.options``, e.g.
``Data("table", root="scans.parquet", options={"path": "file", "label": "diagnosis"})``.
"""
from __future__ import annotations

from pathlib import Path

from tlkit.data.tensors import ImageSet
from tlkit.data.datasets.base import Dataset, EncodedImages, files_key, register_dataset
from tlkit.errors import TlkitError, describe_error

__all__ = ["ImageTable"]


@register_dataset("table")
class ImageTable(Dataset):
    """Images listed in a CSV or Parquet file (``data.root``): path, label and split columns."""

    needs_root = True

    def cache_key(self) -> str | None:
        """The table itself and every image it lists: editing either is seen."""
        if self.root is None or not self.root.is_file():
            return None
        frame = self._frame()
        keys = [files_key(self.root)] + [files_key(p) for p in self._paths(frame) if p.is_file()]
        return "|".join(keys)

    def _columns(self) -> tuple[str, str, str]:
        return (self.options.get("path", "path"), self.options.get("label", "label"),
                self.options.get("split", "split"))

    def _frame(self):  # noqa: ANN202 - a pandas DataFrame
        import pandas as pd

        try:
            frame = pd.read_parquet(self.root) if self.root.suffix in (".parquet", ".pq") else pd.read_csv(self.root)
        except ImportError:
            raise TlkitError(f"Reading the Parquet table {self.root} needs pyarrow. HINT: pip install "
                             f"'tlkit[parquet]' (or pyarrow), or save the table as CSV.") from None
        except Exception as err:  # noqa: BLE001 - pandas raises many types for a broken table
            raise TlkitError(f"Table {self.root} cannot be read ({describe_error(err)}). HINT: give a CSV or Parquet "
                             f"file with columns path, label and split.") from None
        missing = [c for c in self._columns() if c not in frame.columns]
        if missing:
            raise TlkitError(f"Table {self.root} has no column {missing[0]!r} (columns: "
                             f"{', '.join(map(str, frame.columns))}). HINT: name the columns path, label and split, or "
                             f"map yours with data.options={{'path': ..., 'label': ..., 'split': ...}}.")
        for column in self._columns():
            self._check_filled(frame, column)
        return frame

    def _check_filled(self, frame, column: str) -> None:  # noqa: ANN001 - a pandas DataFrame
        """Every row names its image, label and split: an empty cell (NaN once read) would otherwise become a
        class 'nan', a path '.../nan', or a sorting error between a float and the labels' strings."""
        values = frame[column]
        empty = values.isna() | (values.astype(str).str.strip() == "")
        if empty.any():
            rows = [i + 1 for i in range(len(frame)) if empty.iloc[i]]
            shown = ", ".join(map(str, rows[:5])) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")
            raise TlkitError(f"Table {self.root}: column {column!r} is empty in row{'s' if len(rows) > 1 else ''} "
                             f"{shown} (the first data row is row 1). HINT: fill in those cells, or drop the "
                             f"rows.")

    def _paths(self, frame) -> list[Path]:  # noqa: ANN001
        base = self.root.parent
        return [p if p.is_absolute() else base / p for p in (Path(str(v)) for v in frame[self._columns()[0]])]

    def load(self) -> tuple[ImageSet, ImageSet]:
        from tlkit.data.store import decode_all

        return decode_all(self.encoded())

    def encoded(self) -> EncodedImages:
        self.check()
        frame = self._frame()
        _, label_col, split_col = self._columns()
        splits = frame[split_col].astype(str).str.lower()
        bad = sorted(set(splits) - {"train", "test"})
        if bad:
            raise TlkitError(f"Table {self.root}: column {split_col!r} must hold 'train' or 'test' but has {bad[:3]}. "
                             f"HINT: tlkit carves the validation split from train itself.")
        labels = frame[label_col].astype(str)
        classes = sorted(set(labels[splits == "train"]))
        index = {c: i for i, c in enumerate(classes)}
        paths = self._paths(frame)
        files, targets = {}, {}
        for split in ("train", "test"):
            rows = [i for i in range(len(frame)) if splits.iloc[i] == split]
            if not rows:
                raise TlkitError(f"Table {self.root} lists no {split} images. HINT: mark rows with "
                                 f"{split_col}={split!r}.")
            for i in rows:
                if labels.iloc[i] not in index:
                    raise TlkitError(f"Table {self.root}: class {labels.iloc[i]!r} has test images but no training "
                                     f"images. HINT: add training rows for it or drop its test rows.")
                if not paths[i].is_file():
                    raise TlkitError(f"Table {self.root}, row {i + 1}: image {str(paths[i])!r} does not exist. HINT: "
                                     f"paths are absolute or relative to the table's folder.")
            files[split] = [str(paths[i]) for i in rows]
            targets[split] = [index[labels.iloc[i]] for i in rows]
        size = (self.decode_size, self.decode_size) if self.decode_size else None
        return EncodedImages(classes, files, targets, Path, str, size)
