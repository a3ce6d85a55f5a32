"""Precomputed vectors served as if a model produced them: ``npy:`` and ``parquet:`` specs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError, MissingDependencyError, NotFoundError, UsageError
from ..vectors import l2_normalise
from .base import Encoder

class ArrayEncoder(Encoder):
    """Vectors computed elsewhere, served as if a model produced them.

    Row ``i`` of the array belongs to text ``i`` of an aligned text file
    (``texts.read_texts`` order, blanks skipped). ``encode`` looks each text
    up; without aligned texts it only accepts exactly all rows in order.
    ``encode_rows`` returns rows by index directly.
    """

    def __init__(self, vectors, texts: list[str] | None = None, *, name: str = "precomputed",
                 source: dict | None = None, normalize: bool = True):
        super().__init__(name, normalize=normalize)
        vectors = np.asarray(vectors) if not isinstance(vectors, np.memmap) else vectors
        if vectors.ndim != 2 or len(vectors) == 0:
            raise DataError(f"precomputed vectors must be a non-empty 2-D array, got shape {vectors.shape}",
                            "save one vector per row, e.g. np.save(path, array_of_shape_n_by_dim)")
        if texts is not None and len(texts) != len(vectors):
            raise DataError(f"{len(vectors)} precomputed vectors but {len(texts)} aligned texts",
                            "use the text file the vectors were computed from (one vector per non-blank text)")
        self.vectors = vectors
        self.texts = texts
        self._row_of = None if texts is None else _first_row_of(texts)
        self._dim = int(vectors.shape[1])
        self.source = source or {}

    def __len__(self) -> int:
        return len(self.vectors)

    def encode_rows(self, rows, normalize: bool | None = None) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self.vectors)):
            raise DataError(f"row index out of range 0..{len(self.vectors) - 1}",
                            "use rows of the text file the vectors were computed from")
        vectors = np.asarray(self.vectors[rows], dtype=np.float32)
        self._check_output(vectors, len(rows))
        return l2_normalise(vectors) if (self.normalize if normalize is None else normalize) else vectors

    def _encode(self, texts, batch_size, show_progress, kind):
        if self._row_of is None:
            if len(texts) != len(self.vectors):
                raise UsageError(f"{self.name}: {len(texts)} texts given but the vectors have no aligned "
                                 f"texts to look them up by ({len(self.vectors)} rows)",
                                 "add ?texts=<the text file the vectors were computed from> to the spec")
            return np.asarray(self.vectors, dtype=np.float32)
        rows = [self._row_of.get(t, -1) for t in texts]
        missing = [t for t, r in zip(texts, rows) if r < 0]
        if missing:
            raise DataError(f"{len(missing)} of {len(texts)} texts have no precomputed vector in {self.name} "
                            f"(first: {missing[0][:60]!r})",
                            "sample texts from the file the vectors were computed from, or use a model spec")
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows)
        out = np.empty((len(rows), self.vectors.shape[1]), dtype=np.float32)
        out[order] = np.asarray(self.vectors[rows[order]], dtype=np.float32)  # sorted reads suit memmaps
        return out

    def _identity(self) -> dict:
        return {"source": self.source, "shape": list(self.vectors.shape)}


def _first_row_of(texts: list[str]) -> dict:
    row_of = {}
    for i, t in enumerate(texts):
        row_of.setdefault(t, i)
    return row_of


def _file_identity(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _open_npy(path: Path, options: dict, normalize: bool) -> ArrayEncoder:
    _require_file(path, "vector file")
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"'{path}' is not a readable .npy array ({exc})",
                        "save vectors with numpy.save(path, array)") from None
    texts = _aligned_texts(options)
    return ArrayEncoder(vectors, texts, name=f"npy:{path.name}", normalize=normalize,
                        source={"vectors": _file_identity(path), "texts": options.get("texts")})


def _open_parquet(path: Path, options: dict, normalize: bool) -> ArrayEncoder:
    _require_file(path, "parquet file")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError("pyarrow", pip="pyarrow") from None
    column = options.get("column", "embedding")
    text_column = options.get("text_column")
    table = pq.read_table(path)
    for wanted in filter(None, (column, text_column)):
        if wanted not in table.column_names:
            raise UsageError(f"'{path.name}' has no column '{wanted}' (columns: {', '.join(table.column_names)})",
                             "pass ?column=<vector column>&text_column=<text column>")
    values = table.column(column).to_pylist()
    if any(v is None for v in values):
        raise DataError(f"column '{column}' of '{path.name}' has empty vectors", "fill or drop those rows")
    vectors = np.asarray(values, dtype=np.float32)
    texts = [str(t) for t in table.column(text_column).to_pylist()] if text_column else _aligned_texts(options)
    return ArrayEncoder(vectors, texts, name=f"parquet:{path.name}:{column}", normalize=normalize,
                        source={"vectors": _file_identity(path), "column": column, "texts": text_column})


def _aligned_texts(options: dict) -> list[str] | None:
    if not options.get("texts"):
        return None
    from ..texts import read_texts
    return read_texts(options["texts"], column=options.get("text_column"))


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise NotFoundError(f"{what} '{path}' does not exist", "check the path in the encoder spec")
