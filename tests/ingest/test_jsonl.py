"""The direct JSON Lines reader (zarrtok.jsonl) against `datasets.load_dataset("json")` as ground truth."""

from __future__ import annotations

import glob
import json
import os
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zarrtok
from zarrtok.ingest.jsonl import JsonLinesDocuments, plan_json_lines, scan_file
from zarrtok.ingest.sources import DatasetDocuments, apply_split_rules, load_source, resolve_columns

from ..conftest import expected_tokens, write_jsonl


def datasets_texts(data_files, columns=None, **rules) -> dict[str, list[str]]:
    """What the build gets through `datasets` (the reference)."""
    split_datasets = apply_split_rules(load_source("json", data_files=data_files), **rules)
    docs = DatasetDocuments(split_datasets, resolve_columns(split_datasets, columns), "\n\n")
    return {s: docs.head(s, 10**9) for s in docs.splits}


def direct_texts(data_files, columns=None, *, block_bytes=4 << 20, batch_size=1000, **rules) -> dict[str, list[str]]:
    """What the build gets through the direct reader, task by task."""
    files = plan_json_lines("json", data_files=data_files, columns=columns)
    assert files is not None, "the direct reader should take these files"
    cols = ["text"] if columns is None else ([columns] if isinstance(columns, str) else list(columns))
    docs = JsonLinesDocuments.open(files, columns=cols, separator="\n\n", validation_split=rules.get("validation_split"),
                                   test_split=rules.get("test_split"), seed=rules.get("seed", 42),
                                   splits=rules.get("splits"), batch_size=batch_size, block_bytes=block_bytes)
    out = {}
    for s in docs.splits:
        texts = [t for task in docs.tasks(s, batch_size) for t in docs.texts(task)]
        assert len(texts) == docs.num_documents(s)
        out[s] = texts
    return out


def write_lines(path, lines: list[str], newline: str = "\n", final_newline: bool = True) -> str:
    data = newline.join(lines) + (newline if final_newline else "")
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(data)
    return str(path)


TRICKY = [
    json.dumps({"text": "first", "id": "a"}),
    "",
    "   ",
    "\t",
    json.dumps({"text": "line\nbreaks\r\nand \u2028 separators", "id": "b"}),
    json.dumps({"text": None, "id": "c"}),
    json.dumps({"id": "d"}),  # no text column: an empty document
    json.dumps({"text": "", "id": "e"}),
    "  " + json.dumps({"text": "indented, trailing space", "id": "f"}) + "  ",
    json.dumps({"text": "naïve café 東京 🙂 <|endoftext|> inside", "id": "g"}, ensure_ascii=False),
    json.dumps({"text": "x" * 3000, "id": "h"}),  # longer than a tiny block
    json.dumps({"text": "last", "id": "i"}),
]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("final_newline", [True, False])
@pytest.mark.parametrize("block_bytes", [16, 1000, 4 << 20])
def test_same_documents_as_datasets(tmp_path, newline, final_newline, block_bytes):
    path = write_lines(tmp_path / "a.jsonl", TRICKY, newline, final_newline)
    expected = datasets_texts(path)
    assert direct_texts(path, block_bytes=block_bytes, batch_size=3) == expected
    assert len(expected["train"]) == sum(1 for line in TRICKY if line.strip())


def test_same_documents_several_files_splits_and_columns(tmp_path):
    a = write_lines(tmp_path / "a.jsonl", [json.dumps({"title": f"t{i}", "body": f"b{i}" if i % 3 else None})
                                           for i in range(40)])
    b = write_lines(tmp_path / "b.ndjson", [json.dumps({"title": "", "body": f"second {i}"}) for i in range(25)])
    c = write_lines(tmp_path / "c.json", [json.dumps({"title": f"v{i}", "body": "x"}) for i in range(7)])
    files = {"train": [a, b], "validation": c}
    for columns in (["title", "body"], "body"):
        expected = datasets_texts(files, columns)
        assert list(expected) == ["train", "validation"]
        assert direct_texts(files, columns, block_bytes=64, batch_size=5) == expected


@pytest.mark.parametrize("rules", [
    {"validation_split": 0.1},
    {"validation_split": 0.2, "test_split": 0.05, "seed": 7},
    {"test_split": 0.3, "splits": ["test"]},
])
def test_carved_splits_match_datasets(tmp_path, docs, rules):
    path = write_jsonl(docs, tmp_path / "d.jsonl")
    assert direct_texts(path, block_bytes=2000, batch_size=17, **rules) == datasets_texts(path, **rules)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(st.one_of(st.none(), st.text(max_size=40)), min_size=1, max_size=30),
    blanks=st.lists(st.sampled_from(["", " ", "\t", " \t "]), max_size=5),
    seed=st.integers(0, 10**6),
    block_bytes=st.integers(1, 200),
    batch_size=st.integers(1, 8),
    crlf=st.booleans(),
)
def test_arbitrary_lines_match_datasets(tmp_path_factory, texts, blanks, seed, block_bytes, batch_size, crlf):
    rng = np.random.default_rng(seed)
    if all(t is None for t in texts):  # an all-null column has no string type in `datasets` (an error there)
        texts = ["x", *texts]
    lines = [json.dumps({"text": t, "n": i}, ensure_ascii=bool(rng.integers(2))) for i, t in enumerate(texts)]
    for blank in blanks:
        lines.insert(int(rng.integers(len(lines) + 1)), blank)
    if not lines[0].strip():  # a leading blank line is fine for both, but the planner needs an object first
        lines.insert(0, json.dumps({"text": "start"}))
    path = write_lines(tmp_path_factory.mktemp("h") / "h.jsonl", lines, "\r\n" if crlf else "\n", bool(rng.integers(2)))
    assert direct_texts(path, block_bytes=block_bytes, batch_size=batch_size) == datasets_texts(path)


def test_blocks_cover_the_file_and_respect_limits(tmp_path, docs):
    path = write_jsonl(docs, tmp_path / "d.jsonl")
    blocks = scan_file(path, 0, block_bytes=5000, block_rows=9)
    assert blocks[0].start == 0 and blocks[-1].end == os.path.getsize(path)
    assert all(a.end == b.start and b.first_row == a.first_row + a.num_rows for a, b in pairwise(blocks))
    assert all(b.num_rows <= 9 for b in blocks)
    assert all(b.end - b.start <= 5000 or b.num_rows == 1 for b in blocks)
    assert sum(b.num_rows for b in blocks) == len(docs)


def reference_blocks(data: bytes, block_bytes: int, block_rows: int | None) -> list[tuple[int, int, int, int, int]]:
    """scan_file's blocks written from its docstring, line by line: the longest run of whole lines that
    fits in block_bytes (one line alone when longer), cut after every block_rows-th row while more
    than block_rows remain. (start, end, first_line, first_row, num_rows)."""
    lines, pos = [], 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        lines.append((pos, end, bool(data[pos:end].rstrip(b"\n").strip(b" \t\r"))))
        pos = end
    blocks, i, line, row = [], 0, 1, 0
    while i < len(lines):
        j = i
        while j < len(lines) and lines[j][1] - lines[i][0] <= block_bytes:
            j += 1
        group = lines[i:max(j, i + 1)]
        while group:
            rows = sum(g[2] for g in group)
            take = len(group)
            if block_rows is not None and rows > block_rows:
                seen = 0
                for take, g in enumerate(group, start=1):
                    seen += g[2]
                    if seen == block_rows:
                        break
            part, group = group[:take], group[take:]
            n = sum(g[2] for g in part)
            blocks.append((part[0][0], part[-1][1], line, row, n))
            line, row = line + len(part), row + n
        i = max(j, i + 1)
    return blocks


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=" \t\r\nab{}\u00e9", max_size=400), block_bytes=st.integers(1, 64),
       block_rows=st.one_of(st.none(), st.integers(1, 6)), window=st.integers(1, 40))
def test_scan_matches_a_line_by_line_reference(tmp_path_factory, text, block_bytes, block_rows, window):
    data = text.encode()
    path = tmp_path_factory.mktemp("scan") / "s.jsonl"
    path.write_bytes(data)
    got = [(b.start, b.end, b.first_line, b.first_row, b.num_rows)
           for b in scan_file(str(path), 0, block_bytes=block_bytes, block_rows=block_rows, window=window)]
    assert got == reference_blocks(data, block_bytes, block_rows)


def test_scan_reads_compressed_streams_through_one_buffer(tmp_path):
    import gzip

    lines = [json.dumps({"text": "x" * (i % 37)}) for i in range(500)] + ["  ", ""]
    data = ("\n".join(lines)).encode()
    (tmp_path / "a.jsonl").write_bytes(data)
    with gzip.open(tmp_path / "a.jsonl.gz", "wb") as f:
        f.write(data)
    plain = scan_file(str(tmp_path / "a.jsonl"), 0, block_bytes=1000, block_rows=7, window=333)
    packed = scan_file(str(tmp_path / "a.jsonl.gz"), 0, block_bytes=1000, block_rows=7, window=333)
    assert [(b.start, b.end, b.num_rows) for b in packed] == [(b.start, b.end, b.num_rows) for b in plain]
    assert [(b.start, b.end, b.first_line, b.first_row, b.num_rows) for b in plain] == reference_blocks(data, 1000, 7)
    assert sum(b.num_rows for b in plain) == 500


@pytest.mark.parametrize("case", ["directory", "not_gzip", "bom", "array", "no_text_column", "shuffle", "kwargs",
                                  "not_json_name", "missing"])
def test_planner_leaves_other_inputs_to_datasets(tmp_path, case):
    path = write_lines(tmp_path / "a.jsonl", [json.dumps({"text": "a"}), json.dumps({"text": "b"})])
    assert plan_json_lines("json", data_files=path, columns=None) == {"train": [path]}
    kwargs = {}
    dataset, data_files = "json", path
    if case == "directory":
        data_files = str(tmp_path)
    elif case == "not_gzip":  # named .gz, not gzip data: datasets decides (and gives its error)
        data_files = write_lines(tmp_path / "a.jsonl.gz", ["x"])
    elif case == "bom":
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(b"\xef\xbb\xbf" + data)
    elif case == "array":
        data_files = write_lines(tmp_path / "b.json", ["[", json.dumps({"text": "a"}), "]"])
    elif case == "no_text_column":
        data_files = write_lines(tmp_path / "b.jsonl", [json.dumps({"body": "a"})])
    elif case == "shuffle":
        kwargs["shuffle"] = True
    elif case == "kwargs":
        kwargs["load_dataset_kwargs"] = {"field": "data"}
    elif case == "not_json_name":
        dataset = "text"
    elif case == "missing":
        data_files = str(tmp_path / "missing.jsonl")
    assert plan_json_lines(dataset, data_files=data_files, columns=None, **kwargs) is None


def test_build_reads_jsonl_directly_without_arrow_cache(tmp_path, jsonl_path, tokenizer_dir, tokenizer, docs, truth):
    cache = os.environ["HF_DATASETS_CACHE"]
    before = set(glob.glob(os.path.join(cache, "**", "*.arrow"), recursive=True))
    store = zarrtok.build("json", data_files=jsonl_path, tokenizer_name=tokenizer_dir, output=tmp_path / "s",
                          num_workers=2, batch_size=50, validation_split=0.1, progress=False)
    assert set(glob.glob(os.path.join(cache, "**", "*.arrow"), recursive=True)) == before
    assert store.manifest.config["source"]["reader"] == "zarrtok-jsonl"
    expected = datasets_texts(jsonl_path, validation_split=0.1)
    for split in ("train", "validation"):
        np.testing.assert_array_equal(np.asarray(store.tokens(split)), expected_tokens(tokenizer, expected[split]))
        assert store.num_documents(split) == len(expected[split])
    # the same call reuses the store; a changed file changes the fingerprint
    again = zarrtok.build("json", data_files=jsonl_path, tokenizer_name=tokenizer_dir, output=tmp_path / "s",
                          num_workers=2, batch_size=50, validation_split=0.1, progress=False)
    assert again.manifest.created == store.manifest.created
    copy = write_jsonl(docs[:-1], tmp_path / "copy.jsonl")
    other = zarrtok.build("json", data_files=copy, tokenizer_name=tokenizer_dir, output=tmp_path / "o", progress=False)
    assert other.fingerprint != store.fingerprint
    np.testing.assert_array_equal(np.asarray(other.tokens("train")), truth[: other.num_tokens("train")])


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("bad, error, message", [
    ('{"text": "broken', ValueError, "line 3: not valid JSON"),
    ('["an", "array"]', ValueError, "line 3: expected a JSON object"),
    ('{"text": 5}', TypeError, "line 3: column 'text' holds int, not a string"),
])
def test_bad_line_names_file_and_line_and_leaves_no_store(tmp_path, tokenizer_dir, workers, bad, error, message):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps({"text": "ok"}), json.dumps({"text": "fine"}), bad,
                                                json.dumps({"text": "after"})])
    out = tmp_path / "s"
    with pytest.raises(error, match=message) as info:
        zarrtok.build("json", data_files=path, tokenizer_name=tokenizer_dir, output=out, num_workers=workers,
                      progress=False)
    assert "bad.jsonl" in str(info.value)
    assert not out.exists() and os.listdir(tmp_path) == ["bad.jsonl"]
