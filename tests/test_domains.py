"""backend/data/domains.py: folder, stdlib, synthetic and random domains."""

import json
import random

import pytest

from backend.config import DomainConfig
from backend.data.domains import (
    SOURCES,
    DataError,
    FolderDomain,
    RandomStringDomain,
    StdlibDomain,
    SyntheticDomain,
    build_domain,
    build_domains,
)
from backend.data.skills import LETTERS


def folder(path, name="mine") -> FolderDomain:
    return build_domain(DomainConfig(name=name, source="folder", path=str(path)))


def write_parquet(path, column: str, values) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({column: values}), path)


def test_every_source_declares_what_config_checks():
    # config validates a domain by its registered source class, not a list of names
    for name in list(SOURCES):
        cls = SOURCES.get(name)
        assert all(isinstance(getattr(cls, a), bool) for a in ("streams_skills", "sized"))
    assert [n for n in SOURCES if SOURCES.get(n).streams_skills] == ["synthetic"]
    assert [n for n in SOURCES if getattr(SOURCES.get(n), "needs_path", False)] == ["folder", "saved"]
    assert {n for n in SOURCES if SOURCES.get(n).sized} == {"stdlib", "shakespeare", "folder", "saved"}


def test_folder_reads_txt_jsonl_and_parquet(tmp_path):
    (tmp_path / "a.txt").write_text("plain text file\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"text": "json one", "id": 1}) + "\n\n" + json.dumps({"text": "json two ü"}) + "\n",
        encoding="utf-8")
    sub = tmp_path / "sub"
    sub.mkdir()
    write_parquet(sub / "c.parquet", "text", ["parquet one", None, "parquet two"])
    (tmp_path / "notes.md").write_text("ignored: not a data file")
    d = folder(tmp_path)
    assert list(d.documents()) == ["plain text file\n", "json one", "json two ü", "parquet one", "parquet two"]
    # until its token cache counts them, the size is the bytes on disk / 4
    assert d.size_tokens == sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".md") // 4


def test_folder_reads_files_in_sorted_order(tmp_path):
    for name in ("c.txt", "a.txt", "b.txt"):
        (tmp_path / name).write_text(name)
    assert list(folder(tmp_path).documents()) == ["a.txt", "b.txt", "c.txt"]


def test_sample_text_takes_windows_of_long_documents(tmp_path):
    letters = random.Random(0)
    (tmp_path / "long.txt").write_text("".join(letters.choice("ab") for _ in range(20_000)))
    (tmp_path / "short.txt").write_text("x")
    d = folder(tmp_path)
    text = d.sample_text(10_000, seed=0)
    assert text.endswith("\nx") and len(text) == 4000 + 2  # one 4000-character window, then the short one
    assert text == d.sample_text(10_000, seed=0) and text != d.sample_text(10_000, seed=1)


def test_size_tokens_from_config_wins(tmp_path):
    (tmp_path / "a.txt").write_text("some text")
    d = build_domain(DomainConfig(name="x", source="folder", path=str(tmp_path), size_tokens=1234))
    assert d.size_tokens == 1234


def assert_data_error(tmp_path, *names, text_field="text"):
    with pytest.raises(DataError) as e:
        list(build_domain(DomainConfig(name="mine", source="folder", path=str(tmp_path),
                                       text_field=text_field)).documents())
    for n in names:
        assert n in str(e.value), str(e.value)
    return str(e.value)


def test_missing_folder(tmp_path):
    assert_data_error(tmp_path / "nope", str(tmp_path / "nope"), "does not exist", "'mine'")


def test_folder_without_data_files(tmp_path):
    (tmp_path / "readme.md").write_text("no data here")
    assert_data_error(tmp_path, str(tmp_path), "no .txt", ".jsonl.zst")


def test_folder_with_only_blank_text(tmp_path):
    (tmp_path / "a.txt").write_text("  \n\n")
    with pytest.raises(DataError, match="'mine': no text found"):
        folder(tmp_path).sample_text(100, seed=0)


def _empty_gz(path):
    import gzip

    gzip.open(path, "wb").close()


@pytest.mark.parametrize("name, write", [
    ("a.txt", lambda p: p.write_text("")),
    ("a.jsonl", lambda p: p.write_text("")),
    ("a.jsonl", lambda p: p.write_text("\n\n")),
    ("a.jsonl.gz", _empty_gz),
    ("a.parquet", lambda p: write_parquet(p, "text", [])),
])
def test_an_empty_file_is_skipped_and_a_folder_of_only_empty_files_is_refused(tmp_path, name, write):
    write(tmp_path / name)
    with pytest.raises(DataError, match="'mine': no text found"):
        folder(tmp_path).sample_text(100, seed=0)
    (tmp_path / "b.txt").write_text("a document")
    assert list(folder(tmp_path).documents()) == ["a document"]


def test_a_file_linked_from_outside_the_folder_is_refused(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "secret.txt"
    data.mkdir()
    outside.write_text("not for training")
    (data / "a.txt").write_text("a document")
    (data / "again.txt").symlink_to(data / "a.txt")  # a link within the folder is fine
    assert list(folder(data).documents()) == ["a document", "a document"]
    (data / "x.txt").symlink_to(outside)
    assert_data_error(data, str(data / "x.txt"), str(outside), "outside the data folder")


def test_jsonl_line_without_text_names_file_and_row(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    assert_data_error(tmp_path, str(tmp_path / "a.jsonl") + ": row 2", "'text'")


def test_jsonl_text_must_be_a_string(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": 5}\n')
    assert_data_error(tmp_path, "a.jsonl: row 1", "'text' must be a string")


def test_invalid_json_names_the_file(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "ok"}\n{"text": "unterminated\n')
    assert_data_error(tmp_path, str(tmp_path / "a.jsonl"), "unreadable")


def test_broken_parquet_names_the_file(tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"PAR1 this is not a parquet file")
    assert_data_error(tmp_path, str(tmp_path / "a.parquet"), "unreadable")


def test_parquet_without_text_column_names_the_columns(tmp_path):
    write_parquet(tmp_path / "a.parquet", "body", ["x"])
    assert_data_error(tmp_path, str(tmp_path / "a.parquet"), "'text'", "body")


@pytest.mark.parametrize("name", ["a.txt", "a.jsonl"])
def test_non_utf8_names_the_file(tmp_path, name):
    (tmp_path / name).write_bytes(b'{"text": "caf\xe9"}\n')
    assert_data_error(tmp_path, str(tmp_path / name))


def test_folder_source_needs_a_path_in_config():
    from backend.config import ConfigError, DataConfig

    with pytest.raises(ConfigError, match=r"domains\[1\]\.path"):
        DataConfig(domains=[DomainConfig(name="a", source="random"),
                            DomainConfig(name="b", source="folder")]).validate("data")


def test_stdlib_domain_loads_python_source():
    d = build_domain(DomainConfig(name="code", source="stdlib"))
    assert isinstance(d, StdlibDomain)
    assert len(d.shards()) > 10 and d.size_tokens > 100_000
    text = next(d.documents())
    assert "def " in text or "import " in text or "class " in text


def test_synthetic_domain_is_deterministic_and_streams_its_skills():
    d = build_domain(DomainConfig(name="s", source="synthetic", skills=["copy", "add2"]))
    assert isinstance(d, SyntheticDomain) and d.skills == ["copy", "add2"]
    a = [d.document(random.Random(5)) for _ in range(3)]
    assert len(set(a)) == 1
    r1, r2 = random.Random(9), random.Random(9)
    docs = [d.document(r1) for _ in range(100)]
    assert docs == [d.document(r2) for _ in range(100)]
    assert docs != [d.document(random.Random(10)) for _ in range(100)]
    heads = {doc.split(" ")[0] for doc in docs}
    # add2 prompts start with a digit or `add` / `sum`; copy with copy/repeat/echo
    assert heads & {"copy", "repeat", "echo"} and heads & (set("123456789") | {"add", "sum"})
    assert not heads & {"reverse", "sort", "parity"}


def test_random_domain_is_deterministic_and_uses_its_symbols():
    d = build_domain(DomainConfig(name="noise", source="random"))
    assert isinstance(d, RandomStringDomain)
    r1, r2 = random.Random(2), random.Random(2)
    docs = [d.document(r1) for _ in range(50)]
    assert docs == [d.document(r2) for _ in range(50)]
    for doc in docs:
        symbols = doc.split(" ")
        assert 4 <= len(symbols) <= 14
        assert set(symbols) <= set(RandomStringDomain.SYMBOLS)
    assert set(LETTERS) <= {s for doc in docs for s in doc.split(" ")}


def test_sample_text_is_deterministic_per_seed():
    d = build_domain(DomainConfig(name="s", source="synthetic", skills=["reverse"]))
    a = d.sample_text(2000, seed=0)
    assert len(a) >= 2000 and a == d.sample_text(2000, seed=0)
    assert a != d.sample_text(2000, seed=1)


def test_build_domains_keeps_order_and_unknown_source_lists_known():
    ds = build_domains([DomainConfig(name="b", source="random"),
                        DomainConfig(name="a", source="synthetic", skills=["copy"])])
    assert [d.name for d in ds] == ["b", "a"]
    with pytest.raises(DataError) as e:
        build_domain(DomainConfig(name="w", source="web"))
    assert "'web'" in str(e.value) and "folder" in str(e.value) and "stdlib" in str(e.value)
