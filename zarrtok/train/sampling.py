"""Epoch orders, mixtures and a distributed, resumable batch sampler.

The design separates *what order the windows of an epoch are in* from *who serves which part of it*:

* An **order** is a pure function ``epoch -> int64 array`` computed from integers only (seeds,
  epochs, sizes, chunk ids), so every process of a job, on any machine, computes the same array
  without communicating. :class:`WindowOrder` orders the windows of one split (sequential, a global
  permutation, or the object-storage friendly chunk-local shuffle of :func:`chunk_local_order`);
  :class:`MixtureOrder` interleaves several such sources by weight. Both are small and picklable
  (the one-entry cache of the last epoch computed is not pickled).
* :class:`GlobalBatchSampler` cuts an epoch's order into *global batches* of
  ``G = batch_size * world_size`` consecutive samples; rank ``r`` serves the slice
  ``[r * batch_size, (r + 1) * batch_size)`` of each. Across ranks every sample of the epoch is
  served exactly once (up to the remainder policy), and the global order does not depend on how
  ``G`` is split into ranks. The only training state needed to resume is ``(epoch, consumed)``:
  the number of samples of the epoch consumed globally. Because the global order is a function of
  the epoch alone, resuming is elastic: a job restarted with another ``world_size`` /
  ``batch_size`` (same ``G``) serves exactly the remaining samples in the same order.

Nothing here reads data, so every function is cheap to test and identical on every rank.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import Any, Protocol

import numpy as np
from torch.utils.data import Sampler

__all__ = [
    "GLOBAL_SALT",
    "MIXTURE_SALT",
    "GlobalBatchSampler",
    "IndexBatch",
    "MixtureOrder",
    "WindowOrder",
    "apportion",
    "chunk_local_order",
    "global_order",
    "resolve_rank_world",
    "sequential_order",
]

#: Third seed word of :func:`global_order` (keeps its stream apart from other ``[seed, epoch]`` users).
GLOBAL_SALT = 0x67_6C_6F_62  # "glob"
#: Third seed word of the per-epoch interleaving of :class:`MixtureOrder`.
MIXTURE_SALT = 0x6D_69_78_65  # "mixe"

SHUFFLE_MODES = ("none", "global", "chunk")
REMAINDER_POLICIES = ("drop", "pad", "partial")


class EpochOrder(Protocol):
    """Anything with ``order(epoch) -> int64 array`` and a fixed ``len()`` (samples per epoch)."""

    def order(self, epoch: int) -> np.ndarray: ...

    def __len__(self) -> int: ...


def _int(name: str, value: Any, *, minimum: int | None = 0) -> int:
    """``value`` as a Python int (rejecting bools and floats), at least ``minimum``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def _cached(cache: tuple[tuple[int, np.ndarray], ...] | None, epoch: int) -> np.ndarray | None:
    for e, order in cache or ():
        if e == epoch:
            return order
    return None


def _remember(cache: tuple[tuple[int, np.ndarray], ...] | None, epoch: int, order: np.ndarray):
    """Keep the two most recent epochs (read-ahead at the end of one epoch looks into the next)."""
    return ((epoch, order),) + tuple(cache or ())[:1]


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


# ---------------------------------------------------------------------------------------------
# Epoch orders of one split


def sequential_order(n: int) -> np.ndarray:
    """Windows ``0..n-1`` in storage order (int64)."""
    return np.arange(_int("n", n), dtype=np.int64)


def global_order(n: int, *, seed: int, epoch: int) -> np.ndarray:
    """A uniformly random permutation of ``0..n-1``, from ``default_rng([seed, epoch, GLOBAL_SALT])``."""
    n = _int("n", n)
    rng = np.random.default_rng([_int("seed", seed), _int("epoch", epoch), GLOBAL_SALT])
    return rng.permutation(n).astype(np.int64, copy=False)


def chunk_local_order(chunk_ids: np.ndarray, *, seed: int, epoch: int, block_chunks: int = 4) -> np.ndarray:
    """The chunk-local shuffle of :class:`~zarrtok.sampler.ChunkShuffleSampler` (bit-identical).

    ``chunk_ids[w]`` is the (non-negative) storage chunk window ``w`` starts in. The distinct
    chunks are shuffled with ``default_rng([seed, epoch])``; consecutive groups of ``block_chunks``
    shuffled chunks form blocks; blocks are served in that order and the windows inside a block
    are shuffled together. So each chunk is needed by one block only (fetched about once per
    epoch) and at most ``block_chunks`` chunks are "open" at a time.
    """
    chunks = np.asarray(chunk_ids)
    if chunks.ndim != 1:
        raise ValueError(f"chunk_ids must be one-dimensional, got shape {chunks.shape}")
    if chunks.size and not np.issubdtype(chunks.dtype, np.integer):
        raise TypeError(f"chunk_ids must be integers, got dtype {chunks.dtype}")
    chunks = chunks.astype(np.int64, copy=False)
    if chunks.size and int(chunks.min()) < 0:
        raise ValueError("chunk_ids must be non-negative")
    block_chunks = _int("block_chunks", block_chunks, minimum=1)
    n = chunks.size
    windows = np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([_int("seed", seed), _int("epoch", epoch)])
    distinct = np.unique(chunks)
    shuffled = rng.permutation(distinct)
    rank = np.empty(int(distinct.max()) + 1 if distinct.size else 0, dtype=np.int64)
    rank[shuffled] = np.arange(shuffled.size)
    block = rank[chunks] // block_chunks
    return windows[np.lexsort((rng.random(n), block))]


class _CachedOrder:
    """Base of the epoch orders: the last two epochs' arrays are cached, never pickled."""

    _cache: tuple[tuple[int, np.ndarray], ...] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = None
        return state


class WindowOrder(_CachedOrder):
    """The per-epoch order of the ``n`` windows of one split.

    ``shuffle`` is ``"none"`` (:func:`sequential_order`), ``"global"`` (:func:`global_order`) or
    ``"chunk"`` (:func:`chunk_local_order`, which needs ``chunk_ids``: the chunk each window starts
    in; :meth:`from_dataset` computes them). :meth:`order` caches the last epoch computed and
    returns it read-only; pickling sends only the parameters (and the chunk ids).
    """

    def __init__(
        self,
        n: int,
        *,
        shuffle: str = "global",
        seed: int = 0,
        block_chunks: int = 4,
        chunk_ids: np.ndarray | None = None,
    ):
        self.n = _int("n", n)
        if shuffle not in SHUFFLE_MODES:
            raise ValueError(f"shuffle must be one of {SHUFFLE_MODES}, got {shuffle!r}")
        self.shuffle = shuffle
        self.seed = _int("seed", seed)
        self.block_chunks = _int("block_chunks", block_chunks, minimum=1)
        self.chunk_ids: np.ndarray | None = None
        if shuffle == "chunk":
            if chunk_ids is None:
                raise ValueError('shuffle="chunk" needs chunk_ids (see WindowOrder.from_dataset)')
            ids = np.asarray(chunk_ids)
            if ids.shape != (self.n,):
                raise ValueError(f"chunk_ids must have shape ({self.n},), got {ids.shape}")
            if ids.size and not np.issubdtype(ids.dtype, np.integer):
                raise TypeError(f"chunk_ids must be integers, got dtype {ids.dtype}")
            ids = ids.astype(np.int64)  # a private copy
            if ids.size and int(ids.min()) < 0:
                raise ValueError("chunk_ids must be non-negative")
            self.chunk_ids = _readonly(ids)
        self._cache: tuple[tuple[int, np.ndarray], ...] | None = None

    @classmethod
    def from_dataset(cls, dataset: Any, *, shuffle: str = "chunk", seed: int = 0, block_chunks: int = 4) -> WindowOrder:
        """The order of a :class:`~zarrtok.dataset.TokenDataset`-like object (``len``, ``seq_len``, ``tokens``).

        For ``"chunk"``, window ``w``'s chunk is ``dataset.tokens.chunk_of(w * stride)`` (all
        windows in chunk 0 when the token source has no ``chunk_of``), as in ``ChunkShuffleSampler``.
        """
        n = len(dataset)
        chunk_ids = None
        if shuffle == "chunk":
            chunk_of = getattr(dataset.tokens, "chunk_of", None)  # a duck-typed dataset may not have one
            windows = np.arange(n, dtype=np.int64)
            stride = getattr(getattr(dataset, "layout", None), "stride", dataset.seq_len)  # window w starts at w * stride
            chunk_ids = chunk_of(windows * stride) if chunk_of is not None else np.zeros(n, dtype=np.int64)
        return cls(n, shuffle=shuffle, seed=seed, block_chunks=block_chunks, chunk_ids=chunk_ids)

    def __len__(self) -> int:
        return self.n

    def order(self, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s window indices: a read-only int64 permutation of ``0..n-1``."""
        epoch = _int("epoch", epoch)
        hit = _cached(self._cache, epoch)
        if hit is not None:
            return hit
        if self.shuffle == "none":
            out = sequential_order(self.n)
        elif self.shuffle == "global":
            out = global_order(self.n, seed=self.seed, epoch=epoch)
        else:
            assert self.chunk_ids is not None
            out = chunk_local_order(self.chunk_ids, seed=self.seed, epoch=epoch, block_chunks=self.block_chunks)
        out = _readonly(np.ascontiguousarray(out, dtype=np.int64))
        self._cache = _remember(self._cache, epoch, out)
        return out

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.chunk_ids is not None:
            self.chunk_ids = _readonly(self.chunk_ids)

    def __repr__(self) -> str:
        return f"WindowOrder(n={self.n}, shuffle={self.shuffle!r}, seed={self.seed}, block_chunks={self.block_chunks})"


# ---------------------------------------------------------------------------------------------
# Mixtures


def apportion(total: int, weights: Sequence[float]) -> np.ndarray:
    """Split ``total`` into integer counts proportional to ``weights`` (largest remainder method).

    Exact (rational arithmetic on the weights' exact binary values): the counts sum to ``total``;
    each is the floor of its quota or one more; ties in the remainders go to the lower index.
    """
    total = _int("total", total)
    w = [Fraction(float(x)) for x in weights]
    s = sum(w)
    quotas = [total * x / s for x in w]
    counts = [math.floor(q) for q in quotas]
    left = total - sum(counts)
    by_remainder = sorted(range(len(w)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[:left]:
        counts[i] += 1
    return np.asarray(counts, dtype=np.int64)


class MixtureOrder(_CachedOrder):
    """A weighted mixture of several sources, with the same ``order(epoch)`` / ``len()`` interface.

    Sample ids are global: source ``i``'s window ``w`` is ``offsets[i] + w`` (``offsets[0] = 0``,
    ``offsets[-1]`` = total windows), the indexing of ``ConcatDataset(datasets)``. Each epoch has
    ``samples_per_epoch`` samples (default: the sum of the source lengths), ``counts[i]`` of them
    from source ``i``: the largest-remainder apportionment of ``samples_per_epoch`` by the
    normalised weights (the same every epoch). Where in the epoch each source's samples go is a
    random interleaving from ``default_rng([seed, epoch, MIXTURE_SALT])``.

    Source ``i`` is read as an endless stream of passes ``sources[i].order(0)``,
    ``sources[i].order(1)``, ...; mixture epoch ``e`` takes draws ``e * counts[i]`` to
    ``(e + 1) * counts[i] - 1`` of it, in stream order. So over the epochs every window of a source
    is used equally often (counts differ by at most one at any point): a source smaller than its
    share repeats within an epoch (each pass a new order), a larger one is subsampled and continues
    where it stopped in the next epoch. Everything is a function of ``seed`` and ``epoch`` (and
    the sources' own seeds), so any epoch can be recomputed for resuming.
    """

    def __init__(
        self,
        sources: Sequence[EpochOrder],
        weights: Sequence[float],
        *,
        seed: int = 0,
        samples_per_epoch: int | None = None,
    ):
        sources = list(sources)
        weights = list(weights)
        if not sources:
            raise ValueError("MixtureOrder needs at least one source")
        if len(weights) != len(sources):
            raise ValueError(f"got {len(weights)} weights for {len(sources)} sources; need one weight per source")
        for i, w in enumerate(weights):
            if isinstance(w, bool) or not isinstance(w, numbers.Real):
                raise TypeError(f"weight {i} must be a number, got {w!r}")
            if not math.isfinite(float(w)) or float(w) <= 0:
                raise ValueError(f"weight {i} must be positive and finite, got {w!r}")
        lengths = [len(s) for s in sources]
        for i, n in enumerate(lengths):
            if n <= 0:
                raise ValueError(f"source {i} is empty (0 windows); remove it or give it data")
        self.sources = sources
        self.weights = np.asarray([float(w) for w in weights], dtype=np.float64)
        self.weights /= self.weights.sum()
        self._raw_weights = [float(w) for w in weights]
        self.seed = _int("seed", seed)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        total = int(self.lengths.sum()) if samples_per_epoch is None else _int("samples_per_epoch", samples_per_epoch)
        if total <= 0:
            raise ValueError(f"samples_per_epoch must be positive, got {total}")
        self.samples_per_epoch = total
        self.counts = apportion(total, self._raw_weights)
        self._cache: tuple[tuple[int, np.ndarray], ...] | None = None

    def __len__(self) -> int:
        return self.samples_per_epoch

    @property
    def num_windows(self) -> int:
        """Total windows over all sources (the length of the matching ``ConcatDataset``)."""
        return int(self.offsets[-1])

    def locate(self, global_ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(source, window)`` int64 arrays for global sample ids (the inverse of ``offsets[source] + window``)."""
        ids = np.asarray(global_ids, dtype=np.int64)
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= self.num_windows):
            raise IndexError(f"global sample ids must be in [0, {self.num_windows})")
        source = np.searchsorted(self.offsets, ids, side="right") - 1
        return source.astype(np.int64), ids - self.offsets[source]

    def stream(self, source: int, start: int, count: int) -> np.ndarray:
        """Draws ``start .. start + count - 1`` of source ``source``'s endless stream of passes (local window ids)."""
        src = self.sources[source]
        n = int(self.lengths[source])
        out = np.empty(count, dtype=np.int64)
        filled = 0
        while filled < count:
            p, j = divmod(start + filled, n)
            order = np.asarray(src.order(p))
            if order.shape != (n,):
                raise ValueError(f"source {source}.order({p}) has shape {order.shape}, expected ({n},)")
            take = min(n - j, count - filled)
            out[filled : filled + take] = order[j : j + take]
            filled += take
        return out

    def order(self, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s global sample ids (read-only int64, ``samples_per_epoch`` long)."""
        epoch = _int("epoch", epoch)
        hit = _cached(self._cache, epoch)
        if hit is not None:
            return hit
        k = len(self.sources)
        rng = np.random.default_rng([self.seed, epoch, MIXTURE_SALT])
        labels = rng.permutation(np.repeat(np.arange(k, dtype=np.int64), self.counts))
        positions = np.split(np.argsort(labels, kind="stable"), np.cumsum(self.counts)[:-1])
        out = np.empty(self.samples_per_epoch, dtype=np.int64)
        for i in range(k):
            c = int(self.counts[i])
            out[positions[i]] = self.offsets[i] + self.stream(i, epoch * c, c)
        out = _readonly(out)
        self._cache = _remember(self._cache, epoch, out)
        return out

    def __repr__(self) -> str:
        return (
            f"MixtureOrder(sources={len(self.sources)}, weights={self.weights.round(4).tolist()}, "
            f"seed={self.seed}, samples_per_epoch={self.samples_per_epoch})"
        )


# ---------------------------------------------------------------------------------------------
# Distributed batches


def resolve_rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: explicit values (both or neither), else ``torch.distributed``'s, else ``(0, 1)``."""
    if (rank is None) != (world_size is None):
        raise ValueError(f"give both rank and world_size or neither (got rank={rank!r}, world_size={world_size!r})")
    if rank is not None:
        world_size = _int("world_size", world_size, minimum=1)
        rank = _int("rank", rank)
        if rank >= world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        return rank, world_size
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch builds without distributed
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    return 0, 1


class IndexBatch(list):
    """One rank's batch: a list of Python int sample ids, plus where it sits in the epoch.

    ``epoch``; ``step``: the global step within the epoch; ``first``: the position in the epoch
    order of the global batch's first sample. Pickles with its attributes (DataLoader workers).
    """

    __slots__ = ("epoch", "first", "step")

    def __init__(self, items: Any = (), epoch: int = 0, step: int = 0, first: int = 0):
        super().__init__(items)
        self.epoch = epoch
        self.step = step
        self.first = first

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (list(self), self.epoch, self.step, self.first))

    def __repr__(self) -> str:
        return f"IndexBatch({list.__repr__(self)}, epoch={self.epoch}, step={self.step}, first={self.first})"


class GlobalBatchSampler(Sampler[list[int]]):
    """Distributed, resumable batch sampler over an epoch order (``batch_sampler=`` of a DataLoader).

    Each epoch's ``order(epoch)`` is consumed in global batches of ``G = batch_size * world_size``
    consecutive samples; rank ``r`` gets the slice ``[r * batch_size, (r + 1) * batch_size)`` of
    each, so across ranks every sample is served once. Global step ``k`` covers order positions
    ``phase + k * G`` onwards, where ``phase = consumed % G`` for the current epoch (normally 0)
    and 0 for other epochs.

    ``remainder`` decides the last, incomplete global batch:

    * ``"drop"``: not served; those samples are skipped this epoch (a different set each epoch when
      the order is shuffled). Every rank gets the same number of full batches.
    * ``"pad"``: the order is extended by wrapping around to its first samples (as
      ``DistributedSampler`` does), so every rank gets full batches; a few samples repeat.
    * ``"partial"``: served as a smaller global batch split as evenly as possible over ranks
      (contiguous, lower ranks get the extra samples); a rank whose share is empty yields nothing
      for that step. Ranks can then yield different numbers of batches, which DDP and other
      collective-synchronised training cannot handle: use ``"drop"`` or ``"pad"`` there.

    Resuming: ``consumed`` is the number of samples of ``epoch`` already consumed globally
    (``batch.first + G`` after a batch of a full global step; see :meth:`consumed_after`). Iteration
    starts there; with the same ``G``, any ``world_size`` / ``batch_size`` split serves exactly
    the remaining samples in the same global order. A ``consumed`` that is not a multiple of ``G``
    is honoured as is: global batches then start at ``consumed`` and step by ``G`` from there.
    ``consumed`` at or past the epoch's end yields nothing. Iterating never changes the sampler's
    state; :meth:`set_epoch` (which resets ``consumed`` to 0 when the epoch changes) moves on.
    ``rank`` / ``world_size`` both ``None`` means :func:`resolve_rank_world`.
    """

    def __init__(
        self,
        order: EpochOrder,
        *,
        batch_size: int,
        rank: int | None = 0,
        world_size: int | None = 1,
        remainder: str = "drop",
        epoch: int = 0,
        consumed: int = 0,
    ):
        if not callable(getattr(order, "order", None)):
            raise TypeError(f"order must have an order(epoch) method (WindowOrder / MixtureOrder), got {order!r}")
        self.order = order
        self.batch_size = _int("batch_size", batch_size, minimum=1)
        self.rank, self.world_size = resolve_rank_world(rank, world_size)
        if remainder not in REMAINDER_POLICIES:
            raise ValueError(f"remainder must be one of {REMAINDER_POLICIES}, got {remainder!r}")
        self.remainder = remainder
        self.epoch = _int("epoch", epoch)
        self.consumed = _int("consumed", consumed)

    # -- state ---------------------------------------------------------------------------------

    @property
    def global_batch_size(self) -> int:
        """``G = batch_size * world_size``: samples per global step."""
        return self.batch_size * self.world_size

    @property
    def num_samples(self) -> int:
        """Samples in an epoch's order (``len(order)``)."""
        return len(self.order)

    def set_epoch(self, epoch: int) -> None:
        """Serve ``epoch`` next; ``consumed`` is reset to 0 if the epoch changes."""
        epoch = _int("epoch", epoch)
        if epoch != self.epoch:
            self.consumed = 0
        self.epoch = epoch

    def set_consumed(self, consumed: int) -> None:
        """Resume the current epoch after ``consumed`` samples (counted globally, over all ranks)."""
        self.consumed = _int("consumed", consumed)

    def _phase(self, epoch: int) -> int:
        return self.consumed % self.global_batch_size if epoch == self.epoch else 0

    def _steps(self, phase: int) -> int:
        rest = self.num_samples - phase
        if rest <= 0:
            return 0
        g = self.global_batch_size
        return rest // g if self.remainder == "drop" else -(-rest // g)

    @property
    def steps_per_epoch(self) -> int:
        """Global steps in the current epoch (counted from step 0 of its grid, i.e. including consumed ones)."""
        return self._steps(self._phase(self.epoch))

    def consumed_after(self, step: int, epoch: int | None = None) -> int:
        """The ``consumed`` value to checkpoint once global step ``step`` is done (capped at the epoch length)."""
        epoch = self.epoch if epoch is None else epoch
        return min(self._phase(epoch) + (step + 1) * self.global_batch_size, self.num_samples)

    # -- batches -------------------------------------------------------------------------------

    def _global(self, order: np.ndarray, phase: int, step: int) -> np.ndarray:
        g = self.global_batch_size
        n = order.shape[0]
        start = phase + step * g
        stop = start + g
        if stop <= n:
            return order[start:stop]
        if self.remainder == "pad":
            return order[np.arange(start, stop) % n]
        return order[start:n]

    def _rank_slice(self, batch: np.ndarray) -> np.ndarray:
        b, w, r = self.batch_size, self.world_size, self.rank
        m = batch.shape[0]
        if m == b * w:
            return batch[r * b : (r + 1) * b]
        q, extra = divmod(m, w)
        lo = r * q + min(r, extra)
        return batch[lo : lo + q + (1 if r < extra else 0)]

    def _check_step(self, epoch: int, step: int) -> tuple[int, int, int]:
        epoch = _int("epoch", epoch)
        step = _int("step", step)
        phase = self._phase(epoch)
        steps = self._steps(phase)
        if step >= steps:
            raise IndexError(f"step {step} out of range: epoch {epoch} has {steps} global steps")
        return epoch, step, phase

    def global_batch(self, epoch: int, step: int) -> np.ndarray:
        """All ranks' samples of global step ``step`` of ``epoch`` (rank order), as an int64 array."""
        epoch, step, phase = self._check_step(epoch, step)
        return np.array(self._global(np.asarray(self.order.order(epoch)), phase, step), dtype=np.int64)

    def rank_batch(self, epoch: int, step: int) -> IndexBatch:
        """This rank's :class:`IndexBatch` of global step ``step`` of ``epoch`` (possibly empty for ``"partial"``)."""
        epoch, step, phase = self._check_step(epoch, step)
        batch = self._global(np.asarray(self.order.order(epoch)), phase, step)
        return IndexBatch(self._rank_slice(batch).tolist(), epoch, step, phase + step * self.global_batch_size)

    def upcoming(self, epoch: int, step: int, count: int) -> np.ndarray:
        """This rank's next ``count`` samples after global step ``step`` of ``epoch``, continuing into
        epoch ``epoch + 1`` (from its start) at the end: what read-ahead should fetch next."""
        out: list[np.ndarray] = []
        have = 0
        for e, s in ((epoch, step + 1), (epoch + 1, 0)):
            phase = self._phase(e)
            steps = self._steps(phase)
            if s >= steps:
                continue
            order = np.asarray(self.order.order(e))
            while s < steps and have < count:
                mine = self._rank_slice(self._global(order, phase, s))
                out.append(mine)
                have += mine.size
                s += 1
            if have >= count:
                break
        return np.concatenate(out)[:count].astype(np.int64) if out else np.empty(0, dtype=np.int64)

    def _first_step(self) -> int:
        return self.consumed // self.global_batch_size

    def __len__(self) -> int:
        """Batches this rank yields from ``consumed`` to the end of the current epoch."""
        phase = self._phase(self.epoch)
        steps = self._steps(phase)
        first = self._first_step()
        if first >= steps:
            return 0
        count = steps - first
        if self.remainder == "partial":
            last = self.num_samples - phase - (steps - 1) * self.global_batch_size
            if last < self.global_batch_size and self.rank >= last:  # even split: ranks >= last get nothing
                count -= 1
        return count

    def __iter__(self) -> Iterator[IndexBatch]:
        # snapshot the state now, so set_epoch / set_consumed after iter() do not affect this pass
        epoch, phase, first = self.epoch, self._phase(self.epoch), self._first_step()
        steps = self._steps(phase)
        return self._batches(epoch, phase, first, steps)

    def _batches(self, epoch: int, phase: int, first: int, steps: int) -> Iterator[IndexBatch]:
        if first >= steps:
            return
        order = np.asarray(self.order.order(epoch))
        g = self.global_batch_size
        for step in range(first, steps):
            mine = self._rank_slice(self._global(order, phase, step))
            if mine.size:
                yield IndexBatch(mine.tolist(), epoch, step, phase + step * g)

    def __repr__(self) -> str:
        return (
            f"GlobalBatchSampler(batch_size={self.batch_size}, rank={self.rank}, world_size={self.world_size}, "
            f"remainder={self.remainder!r}, epoch={self.epoch}, consumed={self.consumed}, order={self.order!r})"
        )
