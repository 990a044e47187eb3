"""The visual-embedding table (docs/formats.md §4) as the export needs it: checked rows,
per-category fallback rows, and the ad_id asset file.

Row layout of the exported variable (docs/export.md): rows `0 .. n-1` are the table's ads
in the order of the asset file `ad_ids.txt`; row `n + c` is the fallback of category id
`c` (`1 + line` of `vocab/category.txt`): the mean of the table's ads of that category
(`category_means.npz`), or, for id 0 (unknown) and for categories without an ad in the
table, the mean of all rows.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Sequence

import numpy as np

from tfvctr import layout
from tfvctr.errors import DataError
from tfvctr.io import fs


@dataclasses.dataclass(frozen=True)
class Table:
    """A loaded table: `ad_ids[i]` has `vectors[i]`; `fallback[c]` is category id c's row."""

    path: str
    ad_ids: np.ndarray  # [n] str
    categories: np.ndarray  # [n] str
    vectors: np.ndarray  # [n, dim] float16 / float32, as stored
    fallback: np.ndarray  # [num_categories, dim], same dtype
    dtype: str

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def rows(self) -> int:
        return int(self.vectors.shape[0])

    def all_rows(self) -> np.ndarray:
        """The exported variable's value: the ads' rows, then the fallback rows."""
        return np.concatenate([self.vectors, self.fallback]).astype(self.dtype)

    def lookup(self, ad_ids: Sequence[str], category_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """`(x_v float32 [N, dim], in_table bool [N])`: NumPy reference of the in-graph lookup."""
        index = {a: i for i, a in enumerate(self.ad_ids.tolist())}
        rows = np.array([index.get(a, -1) for a in ad_ids], np.int64)
        in_table = rows >= 0
        rows = np.where(in_table, rows, self.rows + np.asarray(category_ids, np.int64))
        return self.all_rows()[rows].astype(np.float32), in_table


def _load_npz(path: str) -> dict[str, np.ndarray]:
    if not fs.exists(path):
        raise DataError(f"{path}: not found (is the table complete? see its {layout.TABLE_INDEX})")
    with fs.open(path, "rb") as f:
        data = f.read()
    with np.load(io.BytesIO(data)) as npz:
        return {k: npz[k] for k in npz.files}


def load_table(path: str, category_vocabulary: Sequence[str], expected_dim: int) -> Table:
    """Reads and checks `path`; raises a one-line `DataError` for a table that cannot be exported.

    Args:
        path: the `tfvctr embed` output folder.
        category_vocabulary: `vocab/category.txt` of the model's training data (id = 1 + line).
        expected_dim: the width of the model's x_v (`model.visual_dim`).
    """
    index_path = fs.join(path, layout.TABLE_INDEX)
    if not fs.exists(index_path):
        raise DataError(f"{path}: not a visual-embedding table (no {layout.TABLE_INDEX}); write one with `tfvctr embed`")
    index = fs.read_json(index_path, DataError)
    dim = int(index.get("dim", 0))
    if dim != expected_dim:
        raise DataError(f"{path}: table rows are {dim}-d but the model's visual tower gives {expected_dim}-d "
                        f"(a table of another model? re-run `tfvctr embed` with this model)")
    parts = [_load_npz(fs.join(path, name)) for name in index.get("shards", [])]
    if not parts:
        raise DataError(f"{path}: the table has no rows ({layout.TABLE_INDEX} lists no shards)")
    ad_ids = np.concatenate([p["ad_id"] for p in parts]).astype(str)
    vectors = np.concatenate([p["vectors"] for p in parts])
    categories = np.concatenate([p["category"] for p in parts]).astype(str)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise DataError(f"{path}: shard vectors are {vectors.shape[1:]} but {layout.TABLE_INDEX} says {dim}-d")
    if len(ad_ids) != int(index.get("rows", len(ad_ids))):
        raise DataError(f"{path}: the shards hold {len(ad_ids)} rows but {layout.TABLE_INDEX} says {index['rows']}")
    unique, counts = np.unique(ad_ids, return_counts=True)
    if len(unique) != len(ad_ids):
        dupes = unique[counts > 1]
        raise DataError(f"{path}: ad_id {str(dupes[0])!r} appears {int(counts[counts > 1][0])} times "
                        f"({len(dupes)} duplicated ad_ids); one row per ad is expected")
    bad = [a for a in ad_ids[:] if "\n" in a or "\r" in a or a == ""]
    if bad:
        raise DataError(f"{path}: ad_id {bad[0]!r} is empty or holds a line break (the export's ad_id file is one "
                        f"id a line)")
    dtype = str(index.get("dtype", vectors.dtype.name))
    fallback = _fallback_rows(path, vectors, category_vocabulary, dim)
    return Table(path=path, ad_ids=ad_ids, categories=categories, vectors=vectors.astype(dtype),
                 fallback=fallback.astype(dtype), dtype=dtype)


def _fallback_rows(path: str, vectors: np.ndarray, category_vocabulary: Sequence[str], dim: int) -> np.ndarray:
    overall = vectors.astype(np.float64).mean(axis=0)
    fallback = np.tile(overall, (len(category_vocabulary) + 1, 1))
    means_path = fs.join(path, layout.CATEGORY_MEANS)
    if fs.exists(means_path):
        means = _load_npz(means_path)
        ids = {c: i + 1 for i, c in enumerate(category_vocabulary)}
        for category, mean in zip(means["category"].astype(str), means["vectors"], strict=True):
            if category in ids:
                fallback[ids[category]] = mean
    return fallback


def write_ad_ids(table: Table, path: str) -> None:
    """The asset file: one ad_id per line, line i = row i (read by `TextFileInitializer`)."""
    with fs.open(path, "w") as f:
        f.write("\n".join(table.ad_ids.tolist()) + "\n")
