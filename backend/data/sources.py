"""Reading a text domain's documents from disk, one shard at a time, never
the whole corpus at once.

A shard is what one process of a token-cache build reads (backend.data.cache):
one file of a folder, or a contiguous row range of an HF dataset saved with
`save_to_disk`. Formats:

- `.txt`: the whole file is one document;
- `.jsonl`, `.jsonl.gz`, `.jsonl.zst`: one JSON object per line, the
  document in `text_field` (read through `datasets`' json builder,
  streaming: the decompressed file never sits in memory or on disk);
- `.parquet`: the document in column `text_field` (through `datasets`);
- a `save_to_disk` folder: memory-mapped Arrow, the document in `text_field`.

A file without documents (empty, blank lines only, a table of no rows) is
skipped; a domain none of whose files holds one is refused ("no text
found"). A file of a folder that is a link out of the folder is refused, so
a folder inside the data roots (backend.config.limits) reads nothing beyond
them.

Every error is a DataError naming the file and, where it applies, the field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


class DataError(ValueError):
    """A data source is missing, unreadable or empty; the message names it."""


FOLDER_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")
"""File names a folder domain reads (anything else in the folder is ignored)."""

# rows of a saved dataset per shard when it is split for a parallel build
ROWS_PER_SHARD = 50_000


@dataclass(frozen=True)
class Shard:
    """A piece of a text domain's source that one process reads."""

    path: str
    """The file, or the save_to_disk folder."""
    kind: str
    """txt | json | parquet | saved (a save_to_disk folder)."""
    text_field: str = "text"
    """The JSON field / column holding the document (not used for txt)."""
    start: int = 0
    """saved: first row of the shard."""
    stop: int | None = None
    """saved: row after the last (None: to the end)."""

    def documents(self) -> Iterator[str]:
        """The shard's documents in order; blank ones are skipped."""
        try:
            if self.kind == "txt":
                text = Path(self.path).read_text(encoding="utf-8")
                if text.strip():
                    yield text
                return
            yield from self._rows()
        except DataError:
            raise
        except UnicodeDecodeError:
            raise DataError(f"{self.path}: not UTF-8 text") from None
        except Exception as e:  # datasets / pyarrow / json raise many types for broken files
            raise DataError(f"{self.path}: unreadable ({type(e).__name__}: {e})") from None

    def _rows(self) -> Iterator[str]:
        if self.kind == "saved":
            rows = _load_saved(self.path)
            stop = len(rows) if self.stop is None else self.stop
            rows = rows.select_columns([self.text_field]).select(range(self.start, stop))
            first = self.start
        else:
            import datasets

            if self.kind == "parquet" and _parquet_rows(self.path) == 0:
                return  # datasets cannot stream a table of no rows
            try:
                rows = datasets.load_dataset(self.kind, data_files=self.path, split="train", streaming=True)
            except StopIteration:  # the json builder finds no table in a file without a line of JSON
                return
            first = 0
        columns = rows.column_names
        if columns == []:  # blank lines only
            return
        if columns is not None and self.text_field not in columns:
            raise DataError(f"{self.path}: no field {self.text_field!r} (fields: {', '.join(columns)})")
        for i, row in enumerate(rows, first + 1):
            text = row.get(self.text_field)
            if text is None:
                if self.kind == "json":  # JSON lines unify their fields: a missing one reads as null
                    raise DataError(f"{self.path}: row {i} has no string field {self.text_field!r}")
                continue  # a null cell of a table: no document
            if not isinstance(text, str):
                raise DataError(f"{self.path}: row {i}: field {self.text_field!r} must be a string, "
                                f"got {type(text).__name__}")
            if text.strip():
                yield text

    def fingerprint(self) -> list:
        """What identifies this shard's data without reading it: path, size
        and modification time (ns) of every file it reads."""
        p = Path(self.path)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        return [[str(f), (s := f.stat()).st_size, s.st_mtime_ns] for f in files] + [self.start, self.stop]

    def size_bytes(self) -> int:
        """Bytes on disk (a whole saved dataset's, for each of its shards)."""
        return sum(size for _, size, _ in self.fingerprint()[:-2])


def _parquet_rows(path: str) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def _load_saved(path: str):
    """The Dataset saved with save_to_disk at `path` (a DatasetDict: its
    `train` split)."""
    import datasets

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: a saved DatasetDict without a 'train' split (splits: {', '.join(ds)})")
        ds = ds["train"]
    return ds


def folder_shards(folder: str | os.PathLike, text_field: str, domain: str) -> list[Shard]:
    """One shard per data file under `folder` (recursive), in sorted order;
    a file that is a link out of the folder is refused naming it."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"domain {domain!r}: data folder {str(root)!r} does not exist")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(FOLDER_SUFFIXES))
    if not files:
        raise DataError(f"domain {domain!r}: no {', '.join(FOLDER_SUFFIXES)} files in {str(root)!r}")
    real_root = Path(os.path.realpath(root))
    for p in files:
        real = Path(os.path.realpath(p))
        if real_root not in real.parents:
            raise DataError(f"domain {domain!r}: {str(p)!r} is a link to {str(real)!r}, outside the data folder "
                            f"{str(root)!r}; a folder's files must lie in it")
    return [Shard(str(p), _kind(p.name), text_field) for p in files]


def saved_shards(folder: str | os.PathLike, text_field: str, domain: str) -> list[Shard]:
    """Row ranges of the dataset saved with save_to_disk in `folder`; a
    folder that is no saved dataset, or a dataset without `text_field`, is
    refused naming them."""
    path = str(folder)
    if not Path(path).is_dir():
        raise DataError(f"domain {domain!r}: dataset folder {path!r} does not exist")
    try:
        ds = _load_saved(path)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: not a dataset saved with save_to_disk ({type(e).__name__}: {e})") from None
    if text_field not in ds.column_names:
        raise DataError(f"{path}: no field {text_field!r} (fields: {', '.join(ds.column_names)})")
    n = len(ds)
    if n == 0:
        raise DataError(f"domain {domain!r}: dataset {path!r} has no rows")
    return [Shard(path, "saved", text_field, a, min(a + ROWS_PER_SHARD, n)) for a in range(0, n, ROWS_PER_SHARD)]


def _kind(name: str) -> str:
    if name.endswith(".txt"):
        return "txt"
    if name.endswith(".parquet"):
        return "parquet"
    return "json"  # .jsonl, .jsonl.gz, .jsonl.zst: datasets decompresses by the suffix
