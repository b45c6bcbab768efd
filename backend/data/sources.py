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

`Shard.preflight` checks a shard before a run is created, without reading
a corpus twice: each file's format to its end where that costs no reading
(a parquet footer, the frame and block headers of a .zst), and its first
PREFLIGHT_BYTES (decompressed) as the worker will read them (UTF-8, a JSON
object per line with `text_field` a string). What lies past that prefix
(a bad line at line 100,000, a .gz cut short past its first 64 KiB of
text, a bad byte deep in a .txt) is found by the worker's token-cache
build, which names the file as well.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


class DataError(ValueError):
    """A data source is missing, unreadable or empty; the message names it."""


FOLDER_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")
"""File names a folder domain reads (anything else in the folder is ignored)."""

# rows of a saved dataset per shard when it is split for a parallel build
ROWS_PER_SHARD = 50_000
PREFLIGHT_BYTES = 1 << 16
"""Bytes of each file's content (decompressed) that Shard.preflight reads:
a few hundred JSON lines, so a 1 GB folder of 1,000 .jsonl files costs
65 MB of reading (0.6 s on a warm page cache), not a second pass over the
corpus."""


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

    def preflight(self) -> None:
        """Check what can be checked cheaply that the worker will read this
        shard: a .txt's first PREFLIGHT_BYTES are UTF-8; a JSON lines file
        decompresses (a .zst's frames are complete to the end), and its
        lines within the first PREFLIGHT_BYTES are UTF-8 JSON objects with
        `text_field` a string; a .parquet's footer reads and its column
        `text_field` holds text. A saved dataset was opened when its shards
        were listed (saved_shards). DataError naming the file, and the line
        and field where they apply."""
        try:
            if self.kind == "txt":
                with open(self.path, "rb") as f:
                    head = f.read(PREFLIGHT_BYTES)
                    _utf8(head, final=not f.read(1), where=self.path)
            elif self.kind == "json":
                with _open_json(self.path) as f:
                    _check_lines(f, self.path, self.text_field)
            elif self.kind == "parquet":
                _check_parquet(self.path, self.text_field)
        except DataError:
            raise
        except Exception as e:  # a broken stream: gzip's EOFError / BadGzipFile, zlib.error, zstandard.ZstdError
            raise DataError(f"{self.path}: unreadable ({type(e).__name__}: {e})") from None

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


def _utf8(data: bytes, *, final: bool, where: str) -> str:
    """`data` decoded as UTF-8; not `final`, a character cut at its end is
    left out. DataError naming `where` and the byte."""
    import codecs

    try:
        return codecs.getincrementaldecoder("utf-8")().decode(data, final=final)
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not UTF-8 text (byte {e.start})") from None


def _open_json(path: str):
    """A JSON lines file opened for reading lines of bytes, decompressed by
    its suffix as datasets does; a .zst is first walked to its end."""
    if path.endswith(".gz"):
        import gzip

        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        import io

        import zstandard

        problem = _zstd_problem(path)
        if problem:
            raise DataError(f"{path}: not a complete zstd file ({problem})")
        raw = open(path, "rb")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True,
                                                                            closefd=True))
    return open(path, "rb")


def _zstd_problem(path: str) -> str | None:
    """None when every zstd frame of the file at `path` is complete, else
    what is wrong: the frame and block headers are walked (3 bytes read per
    block of up to 128 KiB), nothing is decompressed."""
    size = os.path.getsize(path)
    pos = 0
    with open(path, "rb") as f:
        while pos < size:
            f.seek(pos)
            head = f.read(5)
            magic = int.from_bytes(head[:4], "little")
            if len(head) >= 4 and magic & 0xFFFFFFF0 == 0x184D2A50:  # a skippable frame: its size, then data
                f.seek(pos + 4)
                pos += 8 + int.from_bytes(f.read(4), "little")
                continue
            if len(head) < 5 or magic != 0xFD2FB528:
                return f"no zstd frame at byte {pos}"
            fhd = head[4]  # frame header descriptor: sizes of the optional fields, checksum flag
            single = fhd >> 5 & 1
            pos += 5 + (1 - single) + (0, 1, 2, 4)[fhd & 3] + (single, 2, 4, 8)[fhd >> 6]
            last = 0
            while not last:
                f.seek(pos)
                block = f.read(3)
                if len(block) < 3:
                    return f"ends at byte {size} inside a frame: the file is truncated"
                header = int.from_bytes(block, "little")
                last, kind, n = header & 1, header >> 1 & 3, header >> 3
                if kind == 3:
                    return f"a reserved block type at byte {pos}"
                pos += 3 + (1 if kind == 1 else n)  # an RLE block stores one byte
            pos += 4 * (fhd >> 2 & 1)  # content checksum
    if pos > size:
        return f"ends at byte {size} inside a frame: the file is truncated"
    return None


_JSON_SPACE = re.compile(r"[ \t\r\n]*")


def _check_lines(f, path: str, text_field: str) -> None:
    """The lines of JSON lines file `f` within its first PREFLIGHT_BYTES:
    UTF-8, each one or more JSON objects with `text_field` a string (blank
    lines skipped). A file that starts with `[` is one JSON list, which the
    worker reads whole: only its start is seen here."""
    import json

    decoder = json.JSONDecoder()
    budget, number = PREFLIGHT_BYTES, 0
    while budget > 0:
        raw = f.readline(budget)
        if not raw:
            return
        budget -= len(raw)
        number += 1
        if not raw.endswith(b"\n") and budget <= 0:
            return  # cut by the bound: not a whole line
        line = _utf8(raw, final=True, where=f"{path}: line {number}")
        if number == 1:
            line = line.removeprefix("\ufeff")  # a byte order mark, which datasets strips
            if line.startswith("["):
                return
        at = _JSON_SPACE.match(line).end()
        while at < len(line):  # pyarrow reads several objects on one line too
            try:
                row, end = decoder.raw_decode(line, at)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {number}: not JSON ({e.msg}, column {e.colno})") from None
            at = _JSON_SPACE.match(line, end).end()
            if not isinstance(row, dict):
                raise DataError(f"{path}: line {number}: a JSON {type(row).__name__}, not an object")
            text = row.get(text_field)
            if text is None:
                raise DataError(f"{path}: line {number} has no string field {text_field!r}")
            if not isinstance(text, str):
                raise DataError(f"{path}: line {number}: field {text_field!r} must be a string, "
                                f"got {type(text).__name__}")


def _check_parquet(path: str, text_field: str) -> None:
    """The parquet footer of `path` (at the file's end: a truncated file
    has none) and the type of column `text_field`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a parquet file ({type(e).__name__}: {e})") from None
    if text_field not in schema.names:
        raise DataError(f"{path}: no field {text_field!r} (fields: {', '.join(schema.names)})")
    kind = schema.field(text_field).type
    value = kind.value_type if pa.types.is_dictionary(kind) else kind
    if not (pa.types.is_string(value) or pa.types.is_large_string(value) or pa.types.is_string_view(value)
            or pa.types.is_null(value)):
        raise DataError(f"{path}: field {text_field!r} must hold strings, holds {kind}")


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
