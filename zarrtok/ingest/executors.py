"""Running a plan's shard tasks: in-process, on the local process pool, on any
``concurrent.futures.Executor``, or on Dask distributed. Every engine runs the same task function
(:func:`zarrtok.ingest.plan.run_task`) on the same plan, so they write the same bytes.

* ``"inprocess"``: one task after the other in this process (no retry: an error is the build's).
* ``"pool"`` (``num_workers > 1``): a forked process pool. With at least as many pending tasks as
  workers, workers run whole tasks (each writes its own shard); with fewer, the driver writes the
  shards and the workers encode their units (today's parallelism for one-shard splits). A task that
  fails is retried once.
* a ``concurrent.futures.Executor``: ``executor.submit(run_task_from_area, ...)`` with plain
  strings (pickle-free); the plan is read from the build area by the worker.
* Dask: ``scheduler="tcp://host:8786"`` or a ``dask.distributed.Client``; ``client.map`` of the
  same pickle-free entry point with ``retries`` (Dask reruns a task that failed or whose worker died).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from collections.abc import Callable
from concurrent.futures import Executor, as_completed
from typing import Any

from tqdm.auto import tqdm

from . import plan as _plan

logger = logging.getLogger(__name__)

#: Dask retries per task (a task that raised, or whose worker died)
DASK_RETRIES = 2


def _is_dask_client(obj: Any) -> bool:
    return type(obj).__module__.startswith("distributed") and hasattr(obj, "map") and hasattr(obj, "gather")


def run_plan(plan: _plan.BuildPlan, pending: list[int], *, executor: Any = None, scheduler: Any = None,
             num_workers: int = 1, start_method: str | None = None, progress: bool = False,
             documents: Any = None, encoder: Any = None) -> list[dict[str, Any]]:
    """Run the ``pending`` tasks of ``plan``; return their ledger records (in completion order)."""
    if not pending:
        return []
    bar = tqdm(total=len(pending), unit="shard", desc="building shards", disable=not progress, dynamic_ncols=True)
    try:
        if documents is not None and encoder is not None:
            _plan.seed_context(plan.data, documents, encoder)
        if scheduler is not None or _is_dask_client(executor):
            return _run_dask(plan, pending, scheduler if scheduler is not None else executor, bar.update)
        if isinstance(executor, Executor):
            return _run_futures(plan, pending, executor, bar.update)
        if executor is None:
            executor = "pool" if num_workers > 1 else "inprocess"
        if executor == "inprocess":
            out = []
            for k in pending:
                out.append(_plan.run_task(plan.data, k, plan.staging))
                bar.update(1)
            return out
        if executor == "pool":
            return _run_pool(plan, pending, max(1, num_workers), start_method, bar.update)
        raise ValueError(f"executor must be 'inprocess', 'pool', a concurrent.futures.Executor or a dask Client, "
                         f"got {executor!r}")
    finally:
        bar.close()


def _args(plan: _plan.BuildPlan, k: int) -> tuple[str, str, int, dict[str, Any]]:
    return plan.area.url, plan.staging.url, k, dict(plan.storage_options)


def _run_futures(plan, pending, executor: Executor, update: Callable[[int], Any]) -> list[dict[str, Any]]:
    futures = {executor.submit(_plan.run_task_from_area, *_args(plan, k)): k for k in pending}
    out = []
    for fut in as_completed(futures):
        out.append(fut.result())
        update(1)
    return out


def _run_dask(plan, pending, scheduler: Any, update: Callable[[int], Any]) -> list[dict[str, Any]]:
    try:
        from distributed import Client
        from distributed import as_completed as dask_completed
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("Dask builds need dask[distributed]: pip install 'zarrtok[dask]'") from exc
    own = not _is_dask_client(scheduler)
    client = Client(scheduler) if own else scheduler
    try:
        area, staging, _, opts = _args(plan, 0)
        futures = client.map(_plan.run_task_from_area, [area] * len(pending), [staging] * len(pending), pending,
                             [opts] * len(pending), retries=DASK_RETRIES, pure=False,
                             key=[f"zarrtok-{plan.key}-{k}" for k in pending])
        out = []
        for fut in dask_completed(futures):
            out.append(fut.result())
            update(1)
        return out
    finally:
        if own:
            client.close()


def _pool_task(key: str, staging_url: str, k: int, storage_options: dict[str, Any]) -> dict[str, Any]:
    from ..storage.location import Location

    data = _plan._CONTEXT[key][0]
    return _plan.run_task(data, k, Location(staging_url, storage_options))


def _init_pool_worker() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process: workers are the parallelism


def _run_pool(plan, pending, workers: int, start_method: str | None, update) -> list[dict[str, Any]]:
    method = start_method or ("fork" if sys.platform.startswith("linux") else "spawn")
    ctx = multiprocessing.get_context(method)
    if method != "fork":  # spawned workers read the plan from the build area
        call: Callable = _plan.run_task_from_area
        args = lambda k: _args(plan, k)
    else:
        call = _pool_task
        args = lambda k: (plan.key, plan.staging.url, k, dict(plan.storage_options))
    pool = ctx.Pool(workers, initializer=_init_pool_worker)
    try:
        if len(pending) < workers and method == "fork":
            return _run_units_on_pool(plan, pending, pool, update)
        out = []
        running = {k: pool.apply_async(call, args(k)) for k in pending}
        retried: set[int] = set()
        while running:
            k = next(iter(running))
            try:
                out.append(running.pop(k).get())
                update(1)
            except Exception as exc:
                if k in retried:
                    raise
                logger.warning("task %d failed (%s: %s); retrying it once", k, type(exc).__name__, exc)
                retried.add(k)
                running[k] = pool.apply_async(call, args(k))
        return out
    finally:
        pool.terminate()
        pool.join()


def _run_units_on_pool(plan, pending, pool, update) -> list[dict[str, Any]]:
    """Few tasks, several workers: the driver writes each shard, the workers encode its units."""
    out = []
    for k in pending:
        units = plan.tasks[k]["units"]
        encoded = pool.imap(_encode_unit_star, [(plan.key, u) for u in units], chunksize=1)
        out.append(_plan.run_task(plan.data, k, plan.staging, encoded=encoded))
        update(1)
    return out


def _encode_unit_star(args):
    return _plan.encode_unit(*args)
