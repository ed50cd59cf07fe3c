"""The ``zarrtok`` command line: build / info / sample / demo against ground truth (the source
documents tokenized directly), error exits (code 2, message on stderr), and the real console script."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import zarrtok
from zarrtok.cli import main

from .conftest import expected_tokens

CONSOLE_SCRIPT = os.path.join(os.path.dirname(sys.executable), "zarrtok")


def run_cli(argv: list[str]) -> int:
    """Run ``main(argv)`` the way the console script does (``sys.exit(main())``) and return the
    process exit status it would have: SystemExit(None) -> 0, SystemExit(int) -> int,
    SystemExit(message) -> message on stderr and status 1 (Python's own rule)."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1


def _carve(docs: list[str], fraction: float, seed: int = 42) -> tuple[list[str], list[str]]:
    """The documented carve rule: ceil(fraction * n) documents picked with default_rng(seed), each
    part in source order. Returns (train_docs, carved_docs)."""
    n = len(docs)
    k = math.ceil(fraction * n)
    perm = np.random.default_rng(seed).permutation(n)
    return [docs[i] for i in sorted(perm[k:])], [docs[i] for i in sorted(perm[:k])]


@pytest.fixture(scope="module")
def split_truth(docs, tokenizer):
    train_docs, val_docs = _carve(docs, 0.1)
    return {
        "train": expected_tokens(tokenizer, train_docs),
        "validation": expected_tokens(tokenizer, val_docs),
        "num_documents": {"train": len(train_docs), "validation": len(val_docs)},
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory, jsonl_path, tokenizer_dir):
    """``zarrtok build`` run once (text output); returns (store path, stdout, exit status)."""
    out = tmp_path_factory.mktemp("cli") / "store"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = run_cli([
            "build", "json", "--data-files", jsonl_path, "--tokenizer-name", tokenizer_dir,
            "--output", out, "--validation-split", "0.1", "--no-progress",
        ])
    return str(out), stdout.getvalue(), rc


def _windows(stream: np.ndarray, seq_len: int) -> int:
    return (len(stream) - 1) // seq_len


# -- build ---------------------------------------------------------------------------------------
def test_build_tokens_equal_ground_truth(built, split_truth, tokenizer):
    out, stdout, rc = built
    assert rc == 0
    store = zarrtok.open(out)
    assert store.splits == ["train", "validation"]
    for split in ("train", "validation"):
        np.testing.assert_array_equal(np.asarray(store.tokens(split)).astype(np.int64), split_truth[split])
        assert store.num_documents(split) == split_truth["num_documents"][split]
    assert store.eos_token_id == tokenizer.eos_token_id
    # the text summary names the store, its fingerprint and the token counts
    assert out in stdout
    assert store.fingerprint in stdout
    for split in ("train", "validation"):
        assert f"{len(split_truth[split]):,}" in stdout


def test_build_json_output(tmp_path, jsonl_path, tokenizer_dir, split_truth, capsys):
    out = tmp_path / "store"
    rc = run_cli([
        "build", "json", "--data-files", jsonl_path, "--tokenizer-name", tokenizer_dir,
        "--output", out, "--validation-split", "0.1", "--no-progress", "--json",
    ])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    info = json.loads(captured.out)
    assert set(info["splits"]) == {"train", "validation"}
    for split in ("train", "validation"):
        assert info["splits"][split]["tokens"] == len(split_truth[split])
        assert info["splits"][split]["documents"] == split_truth["num_documents"][split]
    store = zarrtok.open(out)
    assert info["fingerprint"] == store.fingerprint and len(info["fingerprint"]) == 64
    np.testing.assert_array_equal(np.asarray(store.tokens("train")).astype(np.int64), split_truth["train"])


def test_build_same_options_reuses_and_different_needs_overwrite(built, jsonl_path, tokenizer_dir, tokenizer, docs, capsys):
    out, _, _ = built
    store = zarrtok.open(out)
    fingerprint = store.fingerprint
    manifest = os.path.join(out, "zarr.json")
    mtime = os.stat(manifest).st_mtime_ns
    base = ["build", "json", "--data-files", jsonl_path, "--tokenizer-name", tokenizer_dir, "--output", out, "--no-progress"]
    # same options: reused, nothing rewritten
    assert run_cli(base + ["--validation-split", "0.1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fingerprint"] == fingerprint
    assert os.stat(manifest).st_mtime_ns == mtime
    # different options without --overwrite: exit 2, a clear message, the store untouched
    assert run_cli(base + ["--validation-split", "0.2"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("zarrtok: error:")
    assert out in captured.err and "overwrite" in captured.err
    assert zarrtok.open(out).fingerprint == fingerprint
    assert os.stat(manifest).st_mtime_ns == mtime


def test_build_overwrite_replaces(tmp_path, jsonl_path, tokenizer_dir, tokenizer, docs, truth, capsys):
    out = tmp_path / "store"
    base = ["build", "json", "--data-files", jsonl_path, "--tokenizer-name", tokenizer_dir, "--output", out, "--no-progress"]
    assert run_cli(base + ["--validation-split", "0.1"]) == 0
    assert run_cli(base + ["--no-eos-token"]) == 2
    assert run_cli(base + ["--no-eos-token", "--overwrite", "--json"]) == 0
    capsys.readouterr()
    store = zarrtok.open(out)
    assert store.splits == ["train"]
    np.testing.assert_array_equal(np.asarray(store.tokens("train")).astype(np.int64), expected_tokens(tokenizer, docs, eos=False))
    assert os.listdir(tmp_path) == ["store"]  # no staging or old copies left behind


# -- info ------------------------------------------------------------------------------------------
def test_info_text(built, split_truth, tokenizer_dir, tokenizer, capsys):
    out, _, _ = built
    assert run_cli(["info", out]) == 0
    text = capsys.readouterr().out
    store = zarrtok.open(out)
    assert store.fingerprint in text
    assert "uint16" in text and str(store.dtype) == "uint16"
    assert f"{store.manifest.chunk_size:,}" in text
    assert repr(tokenizer_dir) in text  # the tokenizer it was built with
    assert type(tokenizer).__name__ in text
    assert f"eos={tokenizer.eos_token!r}({tokenizer.eos_token_id})" in text
    lines = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    for split in ("train", "validation"):
        assert split in lines, text
        assert lines[split][1] == f"{len(split_truth[split]):,}"  # tokens column
        assert lines[split][2] == f"{split_truth['num_documents'][split]:,}"  # documents column


def test_info_json(built, split_truth, tokenizer_dir, capsys):
    out, _, _ = built
    assert run_cli(["info", out, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    store = zarrtok.open(out)
    assert info["fingerprint"] == store.fingerprint
    assert info["dtype"] == "uint16"
    assert info["chunk_size"] == store.manifest.chunk_size
    assert info["tokenizer"]["name_or_path"] == tokenizer_dir
    assert info["eos_token_id"] == store.tokenizer.eos_token_id
    assert list(info["splits"]) == ["train", "validation"]
    for split in ("train", "validation"):
        assert info["splits"][split]["tokens"] == len(split_truth[split])
        assert info["splits"][split]["token_bytes"] == 2 * len(split_truth[split])


# -- sample ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("split,seq_len,index", [("train", 64, 0), ("train", 64, 17), ("validation", 100, 3), ("train", 333, -1)])
def test_sample_text_and_ids(built, split_truth, tokenizer, capsys, split, seq_len, index):
    out, _, _ = built
    stream = split_truth[split]
    n = _windows(stream, seq_len)
    i = index % n
    window = stream[i * seq_len : i * seq_len + seq_len + 1]
    assert len(window) == seq_len + 1

    assert run_cli(["sample", out, "--split", split, "--seq-len", seq_len, "--index", index]) == 0
    captured = capsys.readouterr()
    assert captured.out == tokenizer.decode(window.tolist()) + "\n"

    assert run_cli(["sample", out, "--split", split, "--seq-len", seq_len, "--index", index, "--ids"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["index"] == index
    assert payload["inputs"] == window[:-1].tolist()
    assert payload["labels"] == window[1:].tolist()


def test_sample_default_split_is_train(built, split_truth, capsys):
    out, _, _ = built
    assert run_cli(["sample", out, "--seq-len", "10", "--ids"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["inputs"] == split_truth["train"][:10].tolist()


# -- errors ----------------------------------------------------------------------------------------
def _assert_error(capsys, argv, *needles):
    rc = run_cli(argv)
    captured = capsys.readouterr()
    assert rc == 2, f"exit status {rc} for {argv}; stderr: {captured.err!r}"
    assert captured.err.strip(), "no message on stderr"
    for needle in needles:
        assert needle in captured.err, f"{needle!r} not in {captured.err!r}"
    return captured.err


def test_error_missing_store(tmp_path, capsys):
    missing = str(tmp_path / "no-such-store")
    _assert_error(capsys, ["info", missing], "zarrtok: error:", missing)
    _assert_error(capsys, ["sample", missing, "--seq-len", "8"], "zarrtok: error:", missing)
    assert not os.path.exists(missing)


def test_error_unknown_split(built, capsys):
    out, _, _ = built
    err = _assert_error(capsys, ["sample", out, "--split", "nope", "--seq-len", "8"], "zarrtok: error:", "nope")
    assert "train" in err  # names the splits it has


def test_error_bad_seq_len_and_index(built, split_truth, capsys):
    out, _, _ = built
    _assert_error(capsys, ["sample", out, "--seq-len", "0"], "zarrtok: error:", "seq_len")
    _assert_error(capsys, ["sample", out, "--seq-len", "-3"], "zarrtok: error:", "seq_len")
    n = _windows(split_truth["train"], 64)
    _assert_error(capsys, ["sample", out, "--seq-len", "64", "--index", str(n)], "zarrtok: error:", str(n))
    # argparse errors are exit status 2 as well
    _assert_error(capsys, ["sample", out, "--seq-len", "abc"], "--seq-len")


def test_error_bad_storage_option_format(built, capsys):
    out, _, _ = built
    _assert_error(
        capsys, ["info", out, "--storage-option", "novalue"], "zarrtok: error:", "--storage-option", "key=value", "novalue"
    )


def test_good_storage_option_is_accepted(built, capsys):
    out, _, _ = built
    # a valid option for the local filesystem (auto_mkdir is a LocalFileSystem argument)
    assert run_cli(["info", out, "--json", "--storage-option", "auto_mkdir=false"]) == 0
    assert json.loads(capsys.readouterr().out)["fingerprint"] == zarrtok.open(out).fingerprint


# -- demo ------------------------------------------------------------------------------------------
def test_demo(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run_cli(["demo", "--output", out, "--docs", "300"]) == 0
    text = capsys.readouterr().out
    checks = [line for line in text.splitlines()
              if line.startswith(("labels are inputs shifted", "stored tokens of the first", "training loader"))]
    assert len(checks) == 3, text
    assert all(line.rstrip().endswith("True") for line in checks), checks
    # the demo store holds its generated docs tokenized with its tokenizer
    from transformers import AutoTokenizer

    from zarrtok.demo import generate_documents

    store = zarrtok.open(out / "store")
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    docs = generate_documents(300, seed=0)
    train_docs, val_docs = _carve(docs, 0.05)
    np.testing.assert_array_equal(np.asarray(store.tokens("train")).astype(np.int64), expected_tokens(tok, train_docs))
    np.testing.assert_array_equal(np.asarray(store.tokens("validation")).astype(np.int64), expected_tokens(tok, val_docs))


# -- the real console script -------------------------------------------------------------------------
@pytest.mark.slow
def test_console_script_subprocess(built, split_truth, tmp_path):
    """The installed ``zarrtok`` script: sample --ids matches ground truth (exit 0); a missing store
    exits with status 2 and a message on stderr."""
    out, _, _ = built
    assert os.access(CONSOLE_SCRIPT, os.X_OK), CONSOLE_SCRIPT
    seq_len, index = 50, 5
    missing = str(tmp_path / "missing")
    # one shell, two invocations (each prints its exit status on a line of its own)
    script = (
        f'"{CONSOLE_SCRIPT}" -q sample "{out}" --seq-len {seq_len} --index {index} --ids; echo "rc=$?"; '
        f'"{CONSOLE_SCRIPT}" -q info "{missing}" 2>"{tmp_path}/err"; echo "rc=$?"'
    )
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=dict(os.environ), timeout=120)
    lines = proc.stdout.splitlines()
    assert len(lines) == 3, (proc.stdout, proc.stderr)
    window = split_truth["train"][index * seq_len : index * seq_len + seq_len + 1]
    payload = json.loads(lines[0])
    assert payload["index"] == index
    assert payload["inputs"] == window[:-1].tolist() and payload["labels"] == window[1:].tolist()
    assert lines[1] == "rc=0", proc.stderr
    err = (tmp_path / "err").read_text()
    assert lines[2] == "rc=2", err
    assert err.startswith("zarrtok: error:") and missing in err, err
    assert not os.path.exists(missing)
