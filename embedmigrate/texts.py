"""Text sources: the fresh sample the new model embeds.

    read_texts("sample.txt")                          one text per line, blanks skipped
    read_texts("docs.jsonl", column="body")           a JSON object per line (field "text" by default)
    read_texts("docs.csv", column="body")             a CSV with a header row
    read_texts("docs.parquet", column="body")         needs pyarrow
    read_texts("docs.jsonl.gz", limit=5000, seed=0)   gzip works for every text format

``limit`` draws a reproducible uniform sample (same file + seed = same rows),
kept in file order. ``load_texts`` returns the same texts plus the row each
came from and how many undecodable byte sequences were replaced: a file that
is not valid UTF-8 is read anyway (U+FFFD in place of the bad bytes) and the
count is reported instead of failing the run.

Rows are counted over the texts that were kept (blank lines and empty values
are skipped), so row ``i`` is the ``i``-th text ``read_texts`` returns without a
limit. Precomputed vectors aligned with a text file follow the same rule.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError, MissingDependencyError, NotFoundError, UsageError

FORMATS = (".txt", ".jsonl", ".csv", ".parquet")
DEFAULT_COLUMN = "text"
_UTF8_REPLACEMENT = b"\xef\xbf\xbd"  # a U+FFFD that was really in the file


@dataclass
class TextSample:
    """Texts read from one file, with where they came from."""

    texts: list[str]
    rows: np.ndarray  # int64, row index of each text among the file's non-blank texts
    path: str
    total: int  # non-blank texts in the file, before ``limit``
    replaced: int = 0  # undecodable byte sequences replaced by U+FFFD
    skipped: int = 0  # blank lines / empty or missing values
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


def read_texts(path, column: str | None = None, limit: int | None = None, seed: int = 0) -> list[str]:
    """The texts of a .txt/.jsonl/.csv/.parquet file (optionally .gz), or a sample of ``limit``."""
    return load_texts(path, column=column, limit=limit, seed=seed).texts


def load_texts(path, column: str | None = None, limit: int | None = None, seed: int = 0) -> TextSample:
    """Like ``read_texts`` but also returns row indices and decoding statistics."""
    path = Path(path)
    fmt = text_format(path)
    if not path.exists():
        raise NotFoundError(f"text file '{path}' does not exist", "check the path")
    if path.is_dir():
        raise UsageError(f"'{path}' is a directory, not a text file",
                         "pass one .txt, .jsonl, .csv or .parquet file")
    if limit is not None and int(limit) < 1:
        raise UsageError(f"limit must be at least 1, got {limit}", "pass a positive --limit")
    if fmt == ".txt" and column is not None:
        raise UsageError(f"'{path.name}' is a plain text file and has no column '{column}'",
                         "drop the column option, or use .jsonl / .csv / .parquet")

    reader = {".txt": _read_txt, ".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}[fmt]
    texts, replaced, skipped = reader(path, column or DEFAULT_COLUMN)
    if not texts:
        where = f" in column '{column or DEFAULT_COLUMN}'" if fmt != ".txt" else ""
        raise DataError(f"'{path}' contains no non-empty texts{where}",
                        "point at a file with one text per line / row")

    rows = np.arange(len(texts), dtype=np.int64)
    if limit is not None and int(limit) < len(texts):
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(texts), size=int(limit), replace=False)).astype(np.int64)
    sample = TextSample([texts[i] for i in rows], rows, str(path), total=len(texts),
                        replaced=replaced, skipped=skipped)
    if replaced:
        sample.notes.append(f"{replaced} undecodable byte sequence(s) in '{path.name}' were "
                            "replaced by U+FFFD (the file is not valid UTF-8)")
    return sample


def text_format(path) -> str:
    """The text format of ``path`` from its suffix (``.gz`` looks at the one before)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = suffixes[-1] if suffixes else ""
    if fmt not in FORMATS or (fmt == ".parquet" and str(path).lower().endswith(".gz")):
        raise UsageError(f"cannot read texts from '{Path(path).name}': unknown format",
                         "use a .txt (one text per line), .jsonl, .csv or .parquet file "
                         "(.txt/.jsonl/.csv may be gzipped)")
    return fmt


# --- decoding ----------------------------------------------------------------

def _read_bytes(path: Path) -> bytes:
    if path.suffix.lower() == ".gz":
        try:
            with gzip.open(path, "rb") as f:
                return f.read()
        except (OSError, EOFError) as exc:
            raise DataError(f"'{path}' is not a readable gzip file ({exc})",
                            "re-compress it, or drop the .gz suffix if it is plain text") from None
    return path.read_bytes()


def _decode(raw: bytes) -> tuple[str, int]:
    """Decode UTF-8, replacing bad bytes; returns the text and how many were replaced."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        # every U+FFFD not present in the original bytes stands for one bad sequence
        return text, text.count("\ufffd") - raw.count(_UTF8_REPLACEMENT)


def _lines(path: Path) -> tuple[list[str], int]:
    text, replaced = _decode(_read_bytes(path))
    if text.startswith("\ufeff"):  # a BOM is not part of the first text
        text = text[1:]
    return text.splitlines(), replaced


# --- formats -----------------------------------------------------------------

def _read_txt(path: Path, _column: str):
    lines, replaced = _lines(path)
    texts = [line.strip() for line in lines]
    kept = [t for t in texts if t]
    return kept, replaced, len(texts) - len(kept)


def _read_jsonl(path: Path, column: str):
    lines, replaced = _lines(path)
    texts, skipped, seen_keys, has_column = [], 0, set(), False
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"'{path.name}' line {lineno} is not valid JSON ({exc.msg})",
                            "fix that line; .jsonl needs one JSON object per line") from None
        if not isinstance(record, dict):
            raise DataError(f"'{path.name}' line {lineno} is not a JSON object",
                            'write one object per line, e.g. {"text": "..."}')
        seen_keys.update(record)
        value = record.get(column)
        has_column = has_column or column in record
        text = _as_text(value)
        if text:
            texts.append(text)
        else:
            skipped += 1
    if not has_column and seen_keys:
        raise _missing_column(path, column, sorted(seen_keys))
    return texts, replaced, skipped


def _read_csv(path: Path, column: str):
    text, replaced = _decode(_read_bytes(path))
    if text.startswith("\ufeff"):
        text = text[1:]
    csv.field_size_limit(1 << 30)  # long documents are normal here
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        raise DataError(f"'{path.name}' is empty", "write a header row and one text per row")
    header = [h.strip() for h in header]
    if column not in header:
        raise _missing_column(path, column, header)
    index = header.index(column)
    texts, skipped = [], 0
    for row in reader:
        value = row[index].strip() if index < len(row) else ""
        if value:
            texts.append(value)
        else:
            skipped += 1
    return texts, replaced, skipped


def _read_parquet(path: Path, column: str):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError("pyarrow", pip="pyarrow") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"'{path.name}' is not a readable parquet file ({type(exc).__name__})",
                        "check the file was fully written") from None
    if column not in table.column_names:
        raise _missing_column(path, column, table.column_names)
    values = table.column(column).to_pylist()
    texts = [t for t in (_as_text(v) for v in values) if t]
    return texts, 0, len(values) - len(texts)


def _as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return str(value).strip()


def _missing_column(path: Path, column: str, available) -> UsageError:
    shown = ", ".join(map(str, list(available)[:20])) or "none"
    return UsageError(f"'{path.name}' has no column '{column}' (columns: {shown})",
                      "pass the column that holds the text, e.g. --text-column body")


def count_texts(path, column: str | None = None) -> int:
    """How many non-blank texts a file holds (what ``sample.new`` can be at most)."""
    return load_texts(path, column=column or None).total


def read_records(path) -> list[dict]:
    """Query records for the quality report: a .jsonl of {"text"[, "doc_id"]} objects,
    or any text file (one query per record, no labels)."""
    path = Path(path)
    if text_format(path) != ".jsonl":
        return [{"text": t} for t in read_texts(path)]
    records = []
    for number, line in enumerate(_lines(path)[0], 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise UsageError(f"{path}:{number} is not a JSON object",
                             "write one {\"text\": ..., \"doc_id\": ...} object per line") from None
        if not isinstance(obj, dict) or not isinstance(obj.get(DEFAULT_COLUMN), str):
            raise UsageError(f"{path}:{number} has no \"text\" string",
                             "write one {\"text\": ..., \"doc_id\": ...} object per line")
        records.append(obj)
    if not records:
        raise DataError(f"'{path}' holds no queries", "add one query per line")
    return records
