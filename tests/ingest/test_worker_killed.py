"""A worker SIGKILLed mid-task: the local pool notices it (its process sentinel), runs the task once
more on a fresh worker and writes the same store, or fails naming the task (never a hang, never a
partial store); Dask (LocalCluster, 2 worker processes) reruns the task of a killed worker.

``multiprocessing.Pool``, which the pool used before, replaces a killed worker silently and never
answers for the task it ran: ``AsyncResult.get()`` then blocks forever. Every test here has a
``timeout`` so that a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from zarrtok.ingest import plan as planmod
from zarrtok.ingest.executors import WorkerDiedError

from ._helpers import assert_same, build, corpus

VICTIM = 1  # the task index whose worker is killed


@pytest.fixture(scope="module")
def setup(tmp_path_factory, docs, tokenizer_dir):
    root = tmp_path_factory.mktemp("killed")
    files = corpus(root, docs)
    return root, files, build(files, tokenizer_dir, root / "ref")


def _kill_self_on(monkeypatch, name: str, marker, *, when, always: bool = False) -> None:
    """Patch ``plan.<name>`` (inherited by forked workers) to SIGKILL its process when ``when(args)``
    holds: the first time only (a marker file says it happened), or every time."""
    real = getattr(planmod, name)
    driver = os.getpid()

    def killing(*args, **kw):
        if os.getpid() != driver and when(args) and (always or not marker.exists()):
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kw)

    monkeypatch.setattr(planmod, name, killing)


@pytest.mark.timeout(120)
def test_pool_worker_killed_mid_task_is_retried(setup, tmp_path, tokenizer_dir, monkeypatch):
    _, files, ref = setup
    marker = tmp_path / "killed-once"
    _kill_self_on(monkeypatch, "run_task", marker, when=lambda a: a[1] == VICTIM)
    store = build(files, tokenizer_dir, tmp_path / "p", num_workers=2)
    assert marker.exists()  # a worker really died running task VICTIM
    assert_same(store, ref)


@pytest.mark.timeout(120)
def test_pool_worker_killed_twice_fails_naming_the_task(setup, tmp_path, tokenizer_dir, monkeypatch):
    _, files, _ = setup
    marker = tmp_path / "killed"
    _kill_self_on(monkeypatch, "run_task", marker, when=lambda a: a[1] == VICTIM, always=True)
    out = tmp_path / "out"
    t0 = time.monotonic()
    with pytest.raises(WorkerDiedError, match=rf"task {VICTIM} \(shard train/000001\).*failed twice.*SIGKILL"):
        build(files, tokenizer_dir, out, num_workers=2)
    assert time.monotonic() - t0 < 60
    assert sorted(os.listdir(tmp_path)) == ["killed"]  # no store, no staging left behind


@pytest.mark.timeout(120)
def test_pool_worker_killed_while_encoding_units(setup, tmp_path, tokenizer_dir, monkeypatch):
    """Fewer tasks than workers: the driver writes the shard, the workers encode its units
    (``_run_units_on_pool``); a worker killed mid-unit has that unit encoded again."""
    _, files, _ = setup
    one = build(files, tokenizer_dir, tmp_path / "one", shard_size=None)
    marker = tmp_path / "killed-once"
    _kill_self_on(monkeypatch, "encode_unit", marker, when=lambda a: a[1]["start"] > 0)
    store = build(files, tokenizer_dir, tmp_path / "one-pool", shard_size=None, num_workers=2)
    assert marker.exists()
    assert_same(store, one)


# -- Dask ---------------------------------------------------------------------------------------------
def _install_slow_task(marker: str, victim: int) -> int:
    """Run on every Dask worker: task ``victim`` announces its pid in ``marker`` (the first time only)
    and sleeps, so that the test can SIGKILL that worker while it runs the task."""
    from zarrtok.ingest import plan

    real = plan.run_task
    if not getattr(real, "_slow_hook", False):
        def slow(data, index, staging, **kw):
            if index == victim:
                try:  # the claim file stays: only the first attempt of the task sleeps
                    os.close(os.open(marker + ".claimed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    pass  # the rerun, or another worker got there first
                else:
                    with open(marker + ".tmp", "w") as f:
                        f.write(str(os.getpid()))
                    os.rename(marker + ".tmp", marker)  # the pid appears whole
                    time.sleep(60)  # killed here
            return real(data, index, staging, **kw)

        slow._slow_hook = True
        plan.run_task = slow
    return os.getpid()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_dask_worker_killed_mid_task(setup, tmp_path, tokenizer_dir):
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    _, files, ref = setup
    marker = str(tmp_path / "victim-pid")
    killed: dict[str, int] = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        pids = set(client.run(_install_slow_task, marker, VICTIM).values())
        assert len(pids) == 2 and os.getpid() not in pids

        def killer():
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not os.path.exists(marker):
                time.sleep(0.05)
            if os.path.exists(marker):
                with open(marker) as f:
                    pid = int(f.read())
                assert pid in pids
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        store = build(files, tokenizer_dir, tmp_path / "d", executor=client)
        thread.join(5)
        assert killed.get("pid") in pids  # the worker running the task was killed mid-task
        for _ in range(100):  # the nanny restarts the killed worker
            if killed["pid"] not in set(client.run(os.getpid).values()):
                break
            time.sleep(0.1)
        assert killed["pid"] not in set(client.run(os.getpid).values())
    assert_same(store, ref)
    assert sorted(os.listdir(tmp_path)) == ["d", "victim-pid", "victim-pid.claimed"]  # no staging / area left
