"""Running a plan's shard tasks: in-process, on the local process pool, on any
``concurrent.futures.Executor``, or on Dask distributed. Every engine runs the same task function
(:func:`zarrtok.ingest.plan.run_task`) on the same plan, so they write the same bytes.

* ``"inprocess"``: one task after the other in this process (no retry: an error is the build's).
* ``"pool"`` (``num_workers > 1``): a forked process pool. With at least as many pending tasks as
  workers, workers run whole tasks (each writes its own shard); with fewer, the driver writes the
  shards and the workers encode their units (today's parallelism for one-shard splits). A task that
  fails, or whose worker process dies (SIGKILL, out of memory: every wait also watches the workers'
  process sentinels), runs once more on a fresh worker; a second failure raises naming the task.
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
        # long-lived workers cache a plan by its key (plan._CONTEXT): a rebuild with the same key (same
        # source, target and layout, a new generation) must not run the previous build's plan
        client.run(_forget_stale_plan, plan.key, plan.data["manifest"]["generation"], on_error="ignore")
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


def _forget_stale_plan(key: str, generation: str) -> None:
    """On a Dask worker: drop the cached context of plan ``key`` if it is another build's (generation)."""
    ctx = _plan._CONTEXT.get(key)
    if ctx is not None and ctx[0].get("manifest", {}).get("generation") != generation:
        _plan._CONTEXT.pop(key, None)


class WorkerDiedError(RuntimeError):
    """A pool worker process died (killed, out of memory, crashed) while it ran a task."""


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


#: seconds between checks of the driver's liveness in an idle pool worker
_WORKER_POLL_S = 1.0


def _pool_worker_main(conn, initializer: Callable | None, parent: int) -> None:
    """A pool worker: run ``(job, fn, args)`` messages, answer ``(job, ok, result)``; exit on ``None``,
    when the pipe closes or when the driver is gone (a SIGKILLed driver leaves no orphans working)."""
    if initializer is not None:
        initializer()
    while True:
        try:
            while not conn.poll(_WORKER_POLL_S):
                if os.getppid() != parent:
                    return
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        job, fn, args = msg
        try:
            result, ok = fn(*args), True
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the driver
            result, ok = exc, False
        try:
            conn.send((job, ok, result))
        except Exception as exc:  # noqa: BLE001 - an unpicklable result or exception
            conn.send((job, False, RuntimeError(f"{type(result).__name__}: {result!r} (could not be sent: {exc})")))


class _Worker:
    def __init__(self, ctx, initializer: Callable | None):
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_pool_worker_main, args=(child, initializer, os.getpid()), daemon=True)
        self.process.start()
        child.close()
        self.job: Any = None  # the job it runs, or None when idle

    def stop(self) -> None:
        try:
            self.conn.close()
        except OSError:
            pass
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(5)
        if self.process.is_alive():  # pragma: no cover - ignored SIGTERM
            self.process.kill()
            self.process.join(5)


class _WatchedPool:
    """A process pool whose every wait also watches the workers' process sentinels: a worker that dies
    mid-job is noticed at once (``multiprocessing.Pool`` replaces it silently and its result never
    comes: ``AsyncResult.get()`` blocks forever), reported with its job, and replaced by a fresh one.

    :meth:`run` runs jobs and yields ``(job, ok, result)`` as they finish (``result`` is the exception
    when not ``ok``, a :class:`WorkerDiedError` for a dead worker); :meth:`imap` is the ordered map of
    ``multiprocessing.Pool.imap`` (each item retried once if its worker dies)."""

    def __init__(self, ctx, workers: int, initializer: Callable | None = None):
        self.ctx, self.size, self.initializer = ctx, max(1, int(workers)), initializer
        self.workers: list[_Worker] = []

    def _spawn(self) -> _Worker:
        worker = _Worker(self.ctx, self.initializer)
        self.workers.append(worker)
        return worker

    def start(self) -> _WatchedPool:
        while len(self.workers) < self.size:
            self._spawn()
        return self

    def close(self) -> None:
        for w in self.workers:
            try:
                if w.job is None and w.process.is_alive():
                    w.conn.send(None)
            except OSError:
                pass
        for w in self.workers:
            w.stop()
        self.workers = []

    def _replace(self, worker: _Worker) -> None:
        worker.stop()
        self.workers.remove(worker)
        self._spawn()

    def run(self, jobs) -> Any:
        """Run ``jobs`` (``(job, fn, args)`` each), one at a time per worker; yield ``(job, ok, result)``
        as they finish. The caller may queue more (retries) on ``self.queue`` while iterating."""
        import collections
        from multiprocessing.connection import wait

        self.queue = collections.deque(jobs)
        self.start()
        while True:
            for w in list(self.workers):
                if w.job is None and self.queue:
                    if not w.process.is_alive():  # died idle: no job of its own is lost
                        logger.warning("pool worker pid %s died idle (%s); starting another", w.process.pid,
                                       _describe_exit(w.process.exitcode))
                        self._replace(w)
                        continue
                    job, fn, args = self.queue.popleft()
                    w.job = job
                    try:
                        w.conn.send((job, fn, args))
                    except (OSError, EOFError):
                        pass  # the worker is gone: its sentinel says so below
            busy = [w for w in self.workers if w.job is not None]
            if not busy:
                if self.queue:
                    continue  # a dead idle worker was replaced: dispatch again
                return
            # the wait: a result, or a worker's death (its sentinel), whichever comes first
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
            for w in busy:
                if w.conn in ready or w.process.sentinel in ready:
                    result = None
                    try:
                        if w.conn.poll():
                            result = w.conn.recv()
                    except (EOFError, OSError):
                        result = None
                    if result is not None:
                        job = w.job
                        w.job = None
                        yield job, result[1], result[2]
                        continue
                    w.process.join(5)  # its pipe closed: it is exiting
                    if w.process.is_alive():  # pragma: no cover - closed its pipe but lingers
                        w.process.kill()
                        w.process.join(5)
                    job, code = w.job, w.process.exitcode
                    w.job = None
                    self._replace(w)
                    err = WorkerDiedError(f"pool worker pid {w.process.pid} died ({_describe_exit(code)})")
                    yield job, False, err

    def imap(self, fn: Callable, iterable, chunksize: int = 1):
        """Ordered results of ``fn(item)``; an item whose worker died is run once more, a second death
        or an exception raises (the first :class:`WorkerDiedError` names the item)."""
        items = list(iterable)
        results: dict[int, Any] = {}
        tries: dict[int, int] = {}
        nxt = 0
        for i, ok, result in self.run((i, fn, (item,)) for i, item in enumerate(items)):
            if not ok:
                if isinstance(result, WorkerDiedError) and tries.get(i, 0) == 0:
                    tries[i] = 1
                    logger.warning("%s while it ran item %d of %d; running it again", result, i, len(items))
                    self.queue.appendleft((i, fn, (items[i],)))
                    continue
                if isinstance(result, WorkerDiedError):
                    raise WorkerDiedError(f"item {i} of {len(items)} killed its worker twice: {result}")
                raise result
            results[i] = result
            while nxt in results:
                yield results.pop(nxt)
                nxt += 1
        while nxt in results:  # pragma: no cover - the loop above drains it
            yield results.pop(nxt)
            nxt += 1


def _pool_task(key: str, staging_url: str, k: int, storage_options: dict[str, Any]) -> dict[str, Any]:
    from ..storage.location import Location

    data = _plan._CONTEXT[key][0]
    return _plan.run_task(data, k, Location(staging_url, storage_options))


def _init_pool_worker() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process: workers are the parallelism


def _run_pool(plan, pending, workers: int, start_method: str | None, update) -> list[dict[str, Any]]:
    """The local pool: every wait watches the workers, a task whose worker died (or that raised) runs
    once more on a fresh worker, a second failure raises naming the task (never a hang)."""
    method = start_method or ("fork" if sys.platform.startswith("linux") else "spawn")
    ctx = multiprocessing.get_context(method)
    if method != "fork":  # spawned workers read the plan from the build area
        call: Callable = _plan.run_task_from_area
        args = lambda k: _args(plan, k)
    else:  # forked workers reuse the driver's context (plan._CONTEXT: the verified encoder, the documents)
        call = _pool_task
        args = lambda k: (plan.key, plan.staging.url, k, dict(plan.storage_options))
    pool = _WatchedPool(ctx, workers, initializer=_init_pool_worker)
    try:
        if len(pending) < workers and method == "fork":
            try:
                return _run_units_on_pool(plan, pending, pool.start(), update)
            except WorkerDiedError as exc:
                raise WorkerDiedError(f"{_task_names(plan, pending)}: {exc}; the build is abandoned") from exc
        out = []
        failed: dict[int, BaseException] = {}
        for k, ok, result in pool.run((k, call, args(k)) for k in pending):
            if ok:
                out.append(result)
                update(1)
                continue
            if k in failed:
                raise _twice(plan, k, failed[k], result)
            logger.warning("%s failed (%s: %s); retrying it once", _task_names(plan, [k]), type(result).__name__,
                           result)
            failed[k] = result
            pool.queue.appendleft((k, call, args(k)))
        return out
    finally:
        pool.close()


def _task_names(plan, ks: list[int]) -> str:
    names = [f"{plan.tasks[k]['split']}/{plan.tasks[k]['name']}" for k in ks[:5]]
    return f"task{'s' if len(ks) > 1 else ''} {', '.join(map(str, ks[:5]))}{'...' if len(ks) > 5 else ''} " \
        f"(shard{'s' if len(ks) > 1 else ''} {', '.join(names)}) of plan {plan.key}"


def _twice(plan, k: int, first: BaseException, second: BaseException) -> BaseException:
    """The error of a task that failed on its retry too: the second exception (its own type) with a
    note naming the task, or a :class:`WorkerDiedError` when a worker died."""
    what = f"{_task_names(plan, [k])} failed twice ({type(first).__name__}: {first}; then " \
           f"{type(second).__name__}: {second}); the build is abandoned"
    if isinstance(second, WorkerDiedError) or isinstance(first, WorkerDiedError):
        err = WorkerDiedError(what)
        err.__cause__ = second
        return err
    second.add_note(what)
    return second


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
