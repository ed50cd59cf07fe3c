"""Tests for ``zarrtok.windows``: window arithmetic and per-document outputs against brute-force loops."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zarrtok.train.dataset import num_windows
from zarrtok.train.windows import WindowLayout, document_outputs

IGNORE = -100
PAD = 0
BOS = 3
GARBAGE = -7777  # written into raw slots past the end of the stream; must never reach the output

FAST = settings(max_examples=150, deadline=None)


# -- brute force ground truth (plain loops, written from the spec, not from the implementation) -----------------


def bf_window_slots(start: int, L: int, bos: bool) -> list[tuple[int | None, int]]:
    """``(input_position or None for BOS, label_position)`` of each slot of the window starting at ``start``."""
    slots = []
    for j in range(L):
        if bos:
            slots.append((None if j == 0 else start + j - 1, start + j))
        else:
            slots.append((start + j, start + j + 1))
    return slots


def bf_starts(N: int, L: int, S: int, bos: bool, drop_last: bool) -> list[int]:
    """Start position of every window, by enumeration."""
    starts, served, i = [], set(), 0
    while True:
        labels = [lab for _, lab in bf_window_slots(i * S, L, bos)]
        if all(p < N for p in labels):  # a full window
            starts.append(i * S)
            served.update(labels)
            i += 1
            continue
        if not drop_last and any(p < N and p not in served for p in labels):
            starts.append(i * S)
        return starts


def bf_windows(tokens: list[int], L: int, S: int, bos: bool, drop_last: bool, mask_overlap: bool):
    """Inputs, labels, input positions, label positions of every window (lists of lists)."""
    N = len(tokens)
    out = {"inputs": [], "labels": [], "input_pos": [], "label_pos": []}
    served: set[int] = set()
    for start in bf_starts(N, L, S, bos, drop_last):
        inp, lab, ipos, lpos, now = [], [], [], [], set()
        for ip, lp in bf_window_slots(start, L, bos):
            if ip is None:
                inp.append(BOS), ipos.append(-1)
            elif ip < N:
                inp.append(tokens[ip]), ipos.append(ip)
            else:
                inp.append(PAD), ipos.append(-1)
            if lp >= N:
                lab.append(IGNORE), lpos.append(-1)
                continue
            lpos.append(lp)
            lab.append(IGNORE if mask_overlap and lp in served else tokens[lp])
            now.add(lp)
        served |= now
        for key, row in zip(out, (inp, lab, ipos, lpos)):
            out[key].append(row)
    return out


def bf_doc(offsets: list[int], p: int) -> int:
    for d in range(len(offsets) - 1):
        if offsets[d] <= p < offsets[d + 1]:
            return d
    raise AssertionError(p)


def bf_document_outputs(offsets: list[int], input_pos: list[list[int]], label_pos: list[list[int]]):
    position_ids, segment_ids, label_mask, cu, lengths = [], [], [], [0], []
    for b, (ip, lp) in enumerate(zip(input_pos, label_pos)):
        L = len(ip)
        is_bos = L > 1 and ip[0] < 0 and ip[1] >= 0
        pids, sids, seg, seg_start = [], [], -1, 0
        for j in range(L):
            if j == 0:
                new = True
            elif ip[j] < 0:  # pad slot: new segment if it is the first of its run
                new = ip[j - 1] >= 0 or (j - 1 == 0 and is_bos)
            elif ip[j - 1] < 0:  # real after synthetic: BOS joins, anything else starts anew
                new = not (j - 1 == 0 and is_bos)
            else:
                new = bf_doc(offsets, ip[j]) != bf_doc(offsets, ip[j - 1])
            if new:
                if j > 0:
                    cu.append(b * L + j)
                    lengths.append(j - seg_start)
                seg, seg_start = seg + 1, j
            pids.append(j - seg_start)
            sids.append(seg)
        cu.append((b + 1) * L)
        lengths.append(L - seg_start)
        position_ids.append(pids)
        segment_ids.append(sids)
        label_mask.append([
            lp[j] >= 0 and (ip[j] < 0 or bf_doc(offsets, ip[j]) == bf_doc(offsets, lp[j])) for j in range(L)
        ])
    return position_ids, segment_ids, label_mask, cu, max(lengths, default=0)


# -- helpers ------------------------------------------------------------------------------------------------------


def read_raw(layout: WindowLayout, tokens: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """What a caller reads: existing tokens of each window, garbage past the end of the stream."""
    raw = np.full((len(indices), layout.read_length), GARBAGE, dtype=np.int64)
    for b, i in enumerate(indices):
        a, z = layout.read_start(int(i)), layout.read_stop(int(i))
        raw[b, : z - a] = tokens[a:z]
    return raw


layouts = st.fixed_dictionaries({
    "N": st.integers(0, 60),
    "L": st.integers(1, 12),
    "S": st.one_of(st.none(), st.integers(1, 15)),
    "bos": st.booleans(),
    "drop_last": st.booleans(),
    "mask_overlap": st.booleans(),
})


def make_layout(p: dict, N: int | None = None) -> WindowLayout:
    return WindowLayout(
        p["N"] if N is None else N, p["L"], stride=p["S"], bos_id=BOS if p["bos"] else None,
        drop_last=p["drop_last"], pad_id=PAD, ignore_index=IGNORE, mask_overlap=p["mask_overlap"],
    )


def stride(p: dict) -> int:
    return p["L"] if p["S"] is None else p["S"]


# -- counts -------------------------------------------------------------------------------------------------------


@FAST
@given(layouts)
def test_counts_match_brute_force(p):
    layout = make_layout(p)
    starts = bf_starts(p["N"], p["L"], stride(p), p["bos"], p["drop_last"])
    assert len(layout) == len(starts)
    assert layout.read_starts(np.arange(len(layout))).tolist() == starts
    assert layout.read_length == p["L"] + (0 if p["bos"] else 1)
    for i, s in enumerate(starts):
        assert layout.read_start(i) == s
        assert layout.read_stop(i) == min(p["N"], s + layout.read_length)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 100_000), st.integers(1, 5_000), st.booleans())
def test_closed_forms(N, L, explicit_stride):
    S = L if explicit_stride else None
    no_bos = WindowLayout(N, L, stride=S)
    assert len(no_bos) == num_windows(N, L) == max(0, (N - 1) // L)
    assert len(WindowLayout(N, L, stride=S, bos_id=BOS)) == ((N - L) // L + 1 if N >= L else 0)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 300), st.integers(1, 400))
def test_closed_forms_with_stride(N, L, S):
    assert len(WindowLayout(N, L, stride=S)) == ((N - 1 - L) // S + 1 if N - 1 >= L else 0)
    assert len(WindowLayout(N, L, stride=S, bos_id=BOS)) == ((N - L) // S + 1 if N >= L else 0)


def test_short_streams_pad_mode():
    assert len(WindowLayout(0, 4, drop_last=False)) == 0
    assert len(WindowLayout(1, 4, drop_last=False)) == 0  # no label position without BOS
    assert len(WindowLayout(2, 4, drop_last=False)) == 1
    assert len(WindowLayout(1, 4, bos_id=BOS, drop_last=False)) == 1
    assert len(WindowLayout(0, 4, bos_id=BOS, drop_last=False)) == 0
    assert len(WindowLayout(9, 4, drop_last=False)) == 2  # full windows cover 1..8 already
    assert len(WindowLayout(10, 4, drop_last=False)) == 3


# -- assemble / positions -----------------------------------------------------------------------------------------


@FAST
@given(layouts, st.randoms(use_true_random=False))
def test_assemble_and_positions_match_brute_force(p, rnd):
    tokens = np.array([rnd.randrange(10, 50_000) for _ in range(p["N"])], dtype=np.int64)
    layout = make_layout(p)
    expected = bf_windows(tokens.tolist(), p["L"], stride(p), p["bos"], p["drop_last"], p["mask_overlap"])
    order = list(range(len(layout))) * 2
    rnd.shuffle(order)
    indices = np.array(order, dtype=np.int64)
    raw = read_raw(layout, tokens, indices)
    raw_before = raw.copy()
    inputs, labels = layout.assemble(indices, raw)
    input_pos, label_pos = layout.positions(indices)
    np.testing.assert_array_equal(raw, raw_before)  # raw is not modified, outputs are new arrays
    assert not np.shares_memory(inputs, raw) and not np.shares_memory(labels, raw)
    for arr in (inputs, labels, input_pos, label_pos):
        assert arr.dtype == np.int64 and arr.shape == (len(indices), p["L"])
    for b, i in enumerate(order):
        assert inputs[b].tolist() == expected["inputs"][i]
        assert labels[b].tolist() == expected["labels"][i]
        assert input_pos[b].tolist() == expected["input_pos"][i]
        assert label_pos[b].tolist() == expected["label_pos"][i]
    real = input_pos >= 0
    np.testing.assert_array_equal(tokens[input_pos[real]], inputs[real])
    real = label_pos >= 0
    masked = labels == IGNORE
    np.testing.assert_array_equal(tokens[label_pos[real & ~masked]], labels[real & ~masked])
    assert not np.any(inputs == GARBAGE) and not np.any(labels == GARBAGE)


@FAST
@given(layouts)
def test_label_coverage(p):
    N, L, S = p["N"], p["L"], stride(p)
    tokens = np.arange(N, dtype=np.int64) + 1000
    layout = make_layout(p)
    indices = np.arange(len(layout))
    _, labels = layout.assemble(indices, read_raw(layout, tokens, indices))
    _, label_pos = layout.positions(indices)
    counted = Counter(label_pos[labels != IGNORE].tolist())
    all_labels = set(range(0 if p["bos"] else 1, N))
    assert set(counted) <= all_labels
    if p["mask_overlap"]:
        assert set(counted.values()) <= {1}
    if not p["drop_last"] and S <= L:
        assert set(counted) == all_labels
    if p["mask_overlap"] and S <= L:  # served positions are exactly the union of windows' real labels
        assert set(counted) == set(label_pos[label_pos >= 0].tolist())


def test_assemble_hand_example_bos_pad():
    tokens = np.arange(100, 110)
    layout = WindowLayout(10, 4, bos_id=1, drop_last=False)
    assert len(layout) == 3
    idx = np.array([2, 0])
    inputs, labels = layout.assemble(idx, read_raw(layout, tokens, idx))
    assert inputs.tolist() == [[1, 108, 109, 0], [1, 100, 101, 102]]
    assert labels.tolist() == [[108, 109, -100, -100], [100, 101, 102, 103]]
    ip, lp = layout.positions(idx)
    assert ip.tolist() == [[-1, 8, 9, -1], [-1, 0, 1, 2]]
    assert lp.tolist() == [[8, 9, -1, -1], [0, 1, 2, 3]]


def test_assemble_hand_example_mask_overlap():
    tokens = np.arange(10, 20)
    layout = WindowLayout(10, 4, stride=2, drop_last=False, mask_overlap=True)
    assert len(layout) == 4
    idx = np.arange(4)
    inputs, labels = layout.assemble(idx, read_raw(layout, tokens, idx))
    assert inputs.tolist() == [[10, 11, 12, 13], [12, 13, 14, 15], [14, 15, 16, 17], [16, 17, 18, 19]]
    assert labels.tolist() == [[11, 12, 13, 14], [-100, -100, 15, 16], [-100, -100, 17, 18], [-100, -100, 19, -100]]


def test_assemble_accepts_narrow_raw_dtype():
    layout = WindowLayout(20, 4)
    raw = np.arange(20, dtype=np.uint16)[:5][None]
    inputs, labels = layout.assemble([0], raw)
    assert inputs.dtype == labels.dtype == np.int64
    assert inputs.tolist() == [[0, 1, 2, 3]] and labels.tolist() == [[1, 2, 3, 4]]


def test_empty_batch():
    layout = WindowLayout(20, 4)
    inputs, labels = layout.assemble([], np.zeros((0, 5), dtype=np.int64))
    assert inputs.shape == labels.shape == (0, 4)
    ip, lp = layout.positions([])
    out = document_outputs([0, 20], ip, lp)
    assert out["cu_seqlens"].tolist() == [0] and out["max_seqlen"] == 0


@FAST
@given(layouts, st.lists(st.integers(0, 40), min_size=1, max_size=30), st.randoms(use_true_random=False))
def test_document_outputs_match_brute_force(p, doc_lengths, rnd):
    offsets = np.concatenate([[0], np.cumsum(doc_lengths)]).astype(np.int64)
    N = int(offsets[-1])
    layout = make_layout(p, N=N)
    indices = [rnd.randrange(len(layout)) for _ in range(rnd.randrange(1, 6))] if len(layout) else []
    input_pos, label_pos = layout.positions(indices)
    tokens = np.arange(N, dtype=np.int64) + 1000
    _, labels = layout.assemble(indices, read_raw(layout, tokens, np.array(indices, dtype=np.int64)))
    out = document_outputs(offsets, input_pos, label_pos, labels=labels)
    pids, sids, mask, cu, max_len = bf_document_outputs(offsets.tolist(), input_pos.tolist(), label_pos.tolist())
    assert out["position_ids"].dtype == np.int64 and out["position_ids"].tolist() == pids
    assert out["segment_ids"].dtype == np.int32 and out["segment_ids"].tolist() == sids
    assert out["label_mask"].dtype == bool and out["label_mask"].tolist() == mask
    assert out["cu_seqlens"].dtype == np.int32 and out["cu_seqlens"].tolist() == cu
    assert isinstance(out["max_seqlen"], int) and out["max_seqlen"] == max_len
    assert np.all(np.diff(out["cu_seqlens"]) > 0)
    expected_labels = [[lab if m else IGNORE for lab, m in zip(row, mrow)] for row, mrow in zip(labels.tolist(), mask)]
    assert out["labels"].tolist() == expected_labels


def test_document_outputs_hand_example_pad():
    # documents: [0, 3) | empty | [3, 7) | [7, 10)
    offsets = [0, 3, 3, 7, 10]
    layout = WindowLayout(10, 4, drop_last=False)
    ip, lp = layout.positions([0, 1, 2])
    assert ip.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, -1, -1]]
    out = document_outputs(offsets, ip, lp)
    assert out["position_ids"].tolist() == [[0, 1, 2, 0], [0, 1, 2, 0], [0, 1, 0, 1]]
    assert out["segment_ids"].tolist() == [[0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 1, 1]]
    assert out["cu_seqlens"].tolist() == [0, 3, 4, 7, 8, 10, 12]
    assert out["max_seqlen"] == 3
    assert out["label_mask"].tolist() == [[True, True, False, True], [True, True, False, True],
                                          [True, False, False, False]]


def test_document_outputs_hand_example_bos():
    offsets = [0, 3, 3, 7, 10]
    layout = WindowLayout(10, 4, bos_id=BOS, drop_last=False)
    ip, lp = layout.positions([0, 1, 2])
    assert ip.tolist() == [[-1, 0, 1, 2], [-1, 4, 5, 6], [-1, 8, 9, -1]]
    out = document_outputs(offsets, ip, lp, labels=np.arange(12).reshape(3, 4), ignore_index=-1)
    assert out["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 0]]
    assert out["segment_ids"].tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]
    assert out["cu_seqlens"].tolist() == [0, 4, 8, 11, 12]
    assert out["max_seqlen"] == 4
    assert out["label_mask"].tolist() == [[True, True, True, False], [True, True, True, False],
                                          [True, True, False, False]]
    assert out["labels"].tolist() == [[0, 1, 2, -1], [4, 5, 6, -1], [8, 9, -1, -1]]


def test_document_outputs_window_starting_mid_document():
    out = document_outputs([0, 100], [[40, 41, 42]], [[41, 42, 43]])
    assert out["position_ids"].tolist() == [[0, 1, 2]]
    assert out["cu_seqlens"].tolist() == [0, 3] and out["label_mask"].all()


# -- validation ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "name"),
    [
        ((10, 0), {}, ValueError, "seq_len"),
        ((10, True), {}, TypeError, "seq_len"),
        ((10, 2.0), {}, TypeError, "seq_len"),
        ((-1, 4), {}, ValueError, "num_tokens"),
        ((None, 4), {}, TypeError, "num_tokens"),
        ((10, 4), {"stride": 0}, ValueError, "stride"),
        ((10, 4), {"stride": 1.5}, TypeError, "stride"),
        ((10, 4), {"bos_id": "<s>"}, TypeError, "bos_id"),
        ((10, 4), {"pad_id": None}, TypeError, "pad_id"),
        ((10, 4), {"ignore_index": 1.0}, TypeError, "ignore_index"),
        ((10, 4), {"drop_last": 1}, TypeError, "drop_last"),
        ((10, 4), {"mask_overlap": "yes"}, TypeError, "mask_overlap"),
    ],
)
def test_layout_validation(args, kwargs, exc, name):
    with pytest.raises(exc, match=name):
        WindowLayout(*args, **kwargs)


def test_index_validation():
    layout = WindowLayout(10, 4)  # 2 windows
    for bad in (-1, 2):
        with pytest.raises(IndexError, match="out of range"):
            layout.read_start(bad)
        with pytest.raises(IndexError, match="out of range"):
            layout.positions([0, bad])
        with pytest.raises(IndexError, match="out of range"):
            layout.assemble([bad], np.zeros((1, 5), dtype=np.int64))
    with pytest.raises(TypeError, match="index"):
        layout.read_start(True)
    with pytest.raises(TypeError, match="indices"):
        layout.read_starts([0.5])
    with pytest.raises(ValueError, match="indices"):
        layout.positions([[0]])
    with pytest.raises(ValueError, match="raw"):
        layout.assemble([0], np.zeros((1, 4), dtype=np.int64))
    with pytest.raises(TypeError, match="raw"):
        layout.assemble([0], np.zeros((1, 5)))


def test_document_outputs_validation():
    ip, lp = WindowLayout(10, 4).positions([0, 1])
    with pytest.raises(ValueError, match="doc_offsets"):
        document_outputs([0, 5, 3, 10], ip, lp)
    with pytest.raises(ValueError, match="doc_offsets"):
        document_outputs([], ip, lp)
    with pytest.raises(ValueError, match="input_pos"):
        document_outputs([0, 6], ip, lp)
    with pytest.raises(ValueError, match="label_pos"):
        document_outputs([0, 10], ip, lp[:1])
    with pytest.raises(TypeError, match="ignore_index"):
        document_outputs([0, 10], ip, lp, ignore_index=None)
    with pytest.raises(ValueError, match="labels"):
        document_outputs([0, 10], ip, lp, labels=np.zeros((1, 4), dtype=np.int64))
