"""Window arithmetic: how fixed-length ``(inputs, labels)`` windows are cut from one token stream.

The split is one contiguous stream of ``N`` tokens at global positions ``0 .. N-1``. A window has
``L = seq_len`` input slots and ``L`` label slots; window ``i`` starts reading at ``i * S`` where
``S = stride`` (default ``L``: back-to-back windows).

Without BOS (the default, Archai-compatible)
    Window ``i`` reads ``r = tokens[i*S : i*S + L + 1]`` (``read_length = L + 1``) and returns
    ``inputs = r[:-1]``, ``labels = r[1:]``: input slot ``j`` is position ``i*S + j`` and label slot
    ``j`` is position ``i*S + j + 1``. Label positions of the stream are ``1 .. N-1`` (position 0 is
    never predicted). The number of full windows is ``(N - 1 - L) // S + 1`` (0 when ``N - 1 < L``);
    for ``S == L`` this is exactly ``(N - 1) // L`` (:func:`zarrtok.dataset.num_windows`).

With BOS (``bos_id`` given)
    Window ``i`` reads ``r = tokens[i*S : i*S + L]`` (``read_length = L``) and returns
    ``inputs = [bos_id] + r[:-1]``, ``labels = r``: the BOS slot predicts the window's first token, input
    slot ``j >= 1`` is position ``i*S + j - 1`` and label slot ``j`` is position ``i*S + j``. Label
    positions are ``0 .. N-1``. Full windows: ``(N - L) // S + 1`` (0 when ``N < L``). ``seq_len = 1``
    is allowed (inputs ``[bos_id]``, labels ``[tokens[i*S]]``), it is merely degenerate.

``drop_last=False`` (pad the tail)
    One extra window (index = number of full windows) is added when it serves at least one label
    position that no full window serves. Its slots past the end of the stream get input ``pad_id`` and
    label ``ignore_index``, slot by slot: an input slot is real iff its position is ``< N``, a label slot
    is real iff its position is ``< N`` (so the last real input token may carry an ignored label). With
    ``S <= L`` every label position of the stream is then covered; a stream too short for one full window
    yields one padded window if it has at least one label position, else none.

``stride``
    ``S < L`` overlaps windows (sliding-window evaluation), ``S > L`` leaves gaps: label positions between
    windows are never served, not even by the padded window (documented, not an error).

``mask_overlap=True``
    Label slots whose position an earlier (lower-index) window already serves get ``ignore_index``: for
    every window ``i >= 1`` that is the first ``max(0, L - S)`` label slots. Over all windows every label
    position then counts exactly once (Hugging Face's "perplexity with a sliding window" recipe). Window 0
    keeps all its labels; the result depends only on the window index, never on batch composition.

:func:`document_outputs` turns the global positions of a batch (:meth:`WindowLayout.positions`) plus the
document end offsets into per-document ``position_ids``, flash-attention ``cu_seqlens`` and a label mask
that drops predictions crossing a document boundary.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["WindowLayout", "document_outputs"]


def _check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as a python int (bool rejected), at least ``minimum`` when given."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _int_array(name: str, value: Any) -> np.ndarray:
    """``value`` as an int64 array; non-integer (or bool) dtypes are a ``TypeError``."""
    arr = np.asarray(value)
    if arr.size == 0 and arr.dtype.kind not in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


class WindowLayout:
    """How ``len(self)`` windows of ``seq_len`` slots are cut from ``num_tokens`` tokens (see the module doc)."""

    def __init__(
        self,
        num_tokens: int,
        seq_len: int,
        *,
        stride: int | None = None,
        bos_id: int | None = None,
        drop_last: bool = True,
        pad_id: int = 0,
        ignore_index: int = -100,
        mask_overlap: bool = False,
    ):
        self.num_tokens = _check_int("num_tokens", num_tokens, 0)
        self.seq_len = _check_int("seq_len", seq_len, 1)
        self.stride = self.seq_len if stride is None else _check_int("stride", stride, 1)
        self.bos_id = None if bos_id is None else _check_int("bos_id", bos_id)
        self.drop_last = _check_bool("drop_last", drop_last)
        self.pad_id = _check_int("pad_id", pad_id)
        self.ignore_index = _check_int("ignore_index", ignore_index)
        self.mask_overlap = _check_bool("mask_overlap", mask_overlap)
        self.num_full_windows = self._count_full()
        self._len = self.num_full_windows + (0 if self.drop_last else int(self._needs_tail()))

    # -- arithmetic -------------------------------------------------------------------------------------

    @property
    def has_bos(self) -> bool:
        """Whether windows start with a synthetic BOS input slot."""
        return self.bos_id is not None

    @property
    def _label_offset(self) -> int:
        """Label slot ``j`` of a window starting at ``s`` is position ``s + j + _label_offset``."""
        return 0 if self.has_bos else 1

    @property
    def read_length(self) -> int:
        """Tokens read for a full window: ``seq_len + 1`` without BOS, ``seq_len`` with BOS."""
        return self.seq_len + self._label_offset

    def _count_full(self) -> int:
        avail = self.num_tokens - self.read_length
        return avail // self.stride + 1 if avail >= 0 else 0

    def _needs_tail(self) -> bool:
        """Whether window ``num_full_windows`` serves a label position that no full window serves."""
        n, k = self.num_tokens, self.num_full_windows
        first_label = k * self.stride + self._label_offset
        if k > 0:  # first position not served by the (contiguous or gapped) full windows
            first_label = max(first_label, (k - 1) * self.stride + self._label_offset + self.seq_len)
        return first_label <= n - 1

    def __len__(self) -> int:
        """Number of windows."""
        return self._len

    def __repr__(self) -> str:
        return (
            f"WindowLayout(num_tokens={self.num_tokens}, seq_len={self.seq_len}, stride={self.stride}, "
            f"bos_id={self.bos_id}, drop_last={self.drop_last}, pad_id={self.pad_id}, "
            f"ignore_index={self.ignore_index}, mask_overlap={self.mask_overlap}) -> {len(self)} windows"
        )

    # -- indices ----------------------------------------------------------------------------------------

    def _check_index(self, index: Any) -> int:
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"window index must be an integer, got {type(index).__name__}")
        if not 0 <= index < self._len:
            raise IndexError(f"window index {int(index)} out of range [0, {self._len})")
        return int(index)

    def _check_indices(self, indices: Any) -> np.ndarray:
        idx = _int_array("indices", indices)
        if idx.size and (idx.min() < 0 or idx.max() >= self._len):
            bad = idx[(idx < 0) | (idx >= self._len)].flat[0]
            raise IndexError(f"window index {int(bad)} out of range [0, {self._len})")
        return idx

    def _check_batch(self, indices: Any) -> np.ndarray:
        idx = self._check_indices(indices)
        if idx.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {idx.shape}")
        return idx

    def read_start(self, index: int) -> int:
        """First token position window ``index`` reads (``index * stride``)."""
        return self._check_index(index) * self.stride

    def read_stop(self, index: int) -> int:
        """One past the last token position window ``index`` reads (shorter for the padded window)."""
        return min(self.num_tokens, self.read_start(index) + self.read_length)

    def read_starts(self, indices: Any) -> np.ndarray:
        """``read_start`` of every index (int64, same shape as ``indices``)."""
        return self._check_indices(indices) * self.stride

    # -- batches ----------------------------------------------------------------------------------------

    def positions(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
        """Global stream position of every input / label slot, int64 ``[B, seq_len]``; -1 for BOS and pad slots.

        Labels hidden by ``mask_overlap`` keep their real position.
        """
        starts = self._check_batch(indices) * self.stride
        slots = np.arange(self.seq_len, dtype=np.int64)
        input_pos = starts[:, None] + (slots - (1 if self.has_bos else 0))
        label_pos = starts[:, None] + (slots + self._label_offset)
        input_pos[input_pos >= self.num_tokens] = -1
        label_pos[label_pos >= self.num_tokens] = -1
        if self.has_bos:
            input_pos[:, 0] = -1
        return input_pos, label_pos

    def assemble(self, indices: Any, raw: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs, labels)``, two new int64 ``[B, seq_len]`` arrays, from the tokens the windows read.

        Row ``b`` of ``raw`` (``[B, read_length]``, any integer dtype) holds tokens ``[read_start(indices[b]),
        read_start + read_length)``; entries at positions ``>= num_tokens`` are ignored (overwritten with
        ``pad_id`` / ``ignore_index``). BOS and ``mask_overlap`` are applied too.
        """
        idx = self._check_batch(indices)
        raw = _int_array("raw", raw)
        if raw.shape != (idx.size, self.read_length):
            raise ValueError(f"raw must have shape {(idx.size, self.read_length)} (indices, read_length), "
                             f"got {raw.shape}")
        L = self.seq_len
        inputs = np.empty((idx.size, L), dtype=np.int64)
        if self.has_bos:
            inputs[:, 0] = self.bos_id
            inputs[:, 1:] = raw[:, : L - 1]
            labels = raw[:, :L].copy()
        else:
            inputs[:] = raw[:, :L]
            labels = raw[:, 1:].copy()
        self._pad(idx * self.stride, inputs, labels)
        if self.mask_overlap:
            self._mask_overlap(idx, labels)
        return inputs, labels

    def _pad(self, starts: np.ndarray, inputs: np.ndarray, labels: np.ndarray) -> None:
        """Overwrite slots past the end of the stream (only the padded window has any)."""
        remaining = self.num_tokens - starts
        n_labels = remaining - self._label_offset  # real label slots per row (before clipping)
        short = np.flatnonzero(n_labels < self.seq_len)
        if short.size == 0:
            return
        slots = np.arange(self.seq_len)
        n_inputs = remaining[short, None] + (1 if self.has_bos else 0)
        inputs[short] = np.where(slots >= n_inputs, self.pad_id, inputs[short])
        labels[short] = np.where(slots >= n_labels[short, None], self.ignore_index, labels[short])

    def _mask_overlap(self, idx: np.ndarray, labels: np.ndarray) -> None:
        """Hide the label slots an earlier window already serves (the first ``L - S`` of windows ``i >= 1``)."""
        overlap = min(self.seq_len, max(0, self.seq_len - self.stride))
        if overlap:
            labels[idx >= 1, :overlap] = self.ignore_index


# -- documents ----------------------------------------------------------------------------------------------


def _check_offsets(doc_offsets: Any) -> np.ndarray:
    offsets = _int_array("doc_offsets", doc_offsets)
    if offsets.ndim != 1 or offsets.size == 0:
        raise ValueError(f"doc_offsets must be a non-empty 1-D array, got shape {offsets.shape}")
    if offsets.size > 1 and np.any(np.diff(offsets) < 0):
        raise ValueError("doc_offsets must be sorted (non-decreasing)")
    return offsets


def _documents(offsets: np.ndarray, pos: np.ndarray, name: str) -> np.ndarray:
    """Document index of each real (``>= 0``) position, -1 for synthetic slots."""
    real = pos >= 0
    if np.any(real & ((pos < offsets[0]) | (pos >= offsets[-1]))):
        raise ValueError(f"{name} has positions outside doc_offsets [{offsets[0]}, {offsets[-1]})")
    docs = np.searchsorted(offsets, pos, side="right") - 1
    return np.where(real, docs, -1)


def _segment_starts(in_docs: np.ndarray) -> np.ndarray:
    """Bool ``[B, L]``: slot starts a segment (slot 0, document change, first synthetic slot of a run)."""
    keys = in_docs.copy()
    if keys.shape[1] >= 2:  # a BOS slot joins the segment of slot 1
        bos = (keys[:, 0] < 0) & (keys[:, 1] >= 0)
        keys[bos, 0] = keys[bos, 1]
    starts = np.ones(keys.shape, dtype=bool)
    starts[:, 1:] = keys[:, 1:] != keys[:, :-1]
    return starts


def document_outputs(
    doc_offsets: Any,
    input_pos: Any,
    label_pos: Any,
    *,
    ignore_index: int = -100,
    labels: Any = None,
) -> dict[str, Any]:
    """Per-document attention inputs for a batch of windows (``input_pos``/``label_pos`` from ``positions``).

    ``doc_offsets`` is sorted ``[0, end_0, ..., end_{D-1}]`` (exclusive ends, EOS included; repeats = empty
    documents). Negative positions are synthetic (BOS/pad) slots. Within a row a segment starts at slot 0, where
    the input's document changes, and at the first pad slot (trailing pad slots form one segment); a BOS slot
    joins slot 1's segment. Returns ``position_ids`` (int64, slot minus segment start), ``cu_seqlens`` (int32,
    flattened row-major segment starts plus ``B*L``), ``max_seqlen`` (int), ``segment_ids`` (int32, per row),
    ``label_mask`` (bool: label real and not in a different document than a real input). If ``labels`` is
    given, ``"labels"`` is added: a copy with ``ignore_index`` where ``label_mask`` is False.
    """
    ignore_index = _check_int("ignore_index", ignore_index)
    offsets = _check_offsets(doc_offsets)
    ip, lp = _int_array("input_pos", input_pos), _int_array("label_pos", label_pos)
    if ip.ndim != 2 or ip.shape != lp.shape:
        raise ValueError(f"input_pos and label_pos must be 2-D of one shape, got {ip.shape} and {lp.shape}")
    B, L = ip.shape
    if B * L >= 2**31:
        raise ValueError(f"batch of {B}x{L} slots is too large for int32 cu_seqlens")
    in_docs, lab_docs = _documents(offsets, ip, "input_pos"), _documents(offsets, lp, "label_pos")
    starts = _segment_starts(in_docs)
    slots = np.arange(L, dtype=np.int64)
    seg_first = np.maximum.accumulate(np.where(starts, slots, 0), axis=1) if L else np.zeros((B, 0), np.int64)
    cu_seqlens = np.append(np.flatnonzero(starts.ravel()), B * L).astype(np.int32)
    out: dict[str, Any] = {
        "position_ids": (slots - seg_first).astype(np.int64),
        "cu_seqlens": cu_seqlens,
        "max_seqlen": int(np.diff(cu_seqlens).max()) if B * L else 0,
        "label_mask": (lp >= 0) & ((ip < 0) | (in_docs == lab_docs)),
        "segment_ids": (np.cumsum(starts, axis=1) - 1).astype(np.int32),
    }
    if labels is not None:
        lab = _int_array("labels", labels)
        if lab.shape != ip.shape:
            raise ValueError(f"labels must have shape {ip.shape}, got {lab.shape}")
        out["labels"] = np.where(out["label_mask"], lab, ignore_index)
    return out
