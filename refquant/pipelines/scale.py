"""Scale-out: a whole-file job's independent tasks on Dask distributed.

A pipeline first computes its plan (each tensor's type, byte size and place in the output),
then hands its tasks — row ranges of tensors, or whole linear layers — to a `Runner`, and
writes each task's bytes where the plan put them. `Runner.imap` returns the results in
submission order, whatever order the tasks finish in, so the output is byte-identical to a
serial run with any number of workers; at most `window` results are held at once, so the
client's memory is bounded by a few tasks, not by the model.

Where the tasks run:

* `workers=1`, no scheduler: in this process, one after another (no Dask is imported).
* `workers=None` (the command line's default): every core (`default_workers`); a whole-file
  job chooses this process instead when its input is small (`choose_workers`).
* `workers=N`: a local Dask cluster of N worker processes, one thread each (numba's kernels
  get one thread a worker: `NUMBA_NUM_THREADS=1`, set before the workers start). A task whose
  result depends on NumPy's BLAS thread count (GPTQ) runs with the client's (`blas_like`).
* `scheduler="tcp://HOST:PORT"`: a running Dask cluster. Workers read the input themselves,
  so it must be at the same path on every worker (a shared filesystem); the client writes the
  output.

Faults: a worker that dies mid-task has its tasks re-run by the scheduler elsewhere (Dask's
`distributed.scheduler.allowed-failures`); a task that raises stops the run with that task's
error (the remaining tasks are cancelled); so does Ctrl-C. The caller's atomic write then
leaves no output.
"""
from __future__ import annotations

import os
from collections import deque
from typing import Callable, Iterable, Iterator, Optional

from ..errors import InputError, RefquantError

WORKERS_ENV = "REFQUANT_WORKERS"     # the command line's default number of workers


def default_workers() -> int:
    """All the cores this process may run on (`$REFQUANT_WORKERS` overrides)."""
    env = os.environ.get(WORKERS_ENV)
    if env:
        try:
            n = int(env)
        except ValueError:
            raise InputError(f"${WORKERS_ENV} must be a whole number of workers, got {env!r}") from None
        return check_workers(n)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:            # not on Linux
        return max(1, os.cpu_count() or 1)


# Below this much input to convert, the default runs in this process: a local cluster's start
# (processes, imports, each worker's Numba cache) costs more than it saves, and this process's
# Numba kernels already run on every core (benchmarks/README.md, "Scale-out").
AUTO_CLUSTER_BYTES = 2 << 30


def choose_workers(workers: Optional[int], scheduler: Optional[str], nbytes: int) -> Optional[int]:
    """The worker count a job of `nbytes` of input runs with: `workers` when given, else
    $REFQUANT_WORKERS when set, else every core for a job of AUTO_CLUSTER_BYTES or more and
    this process (1) for a smaller one."""
    if workers is not None or scheduler is not None or os.environ.get(WORKERS_ENV):
        return workers
    return default_workers() if nbytes >= AUTO_CLUSTER_BYTES else 1


def check_workers(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"--workers must be a whole number >= 1, got {n!r}")
    return n


class Runner:
    """Runs a function over tasks: serially, on a local Dask cluster, or on a remote one.

    Use as a context manager; the cluster (when this runner started one) stops on exit."""

    def __init__(self, workers: Optional[int] = 1, scheduler: Optional[str] = None):
        self.scheduler = scheduler
        self.workers = default_workers() if workers is None else check_workers(workers)
        self._client = None
        self._cluster = None

    @property
    def serial(self) -> bool:
        return self.scheduler is None and self.workers == 1

    def __enter__(self) -> "Runner":
        if self.serial:
            return self
        try:
            import dask
            from distributed import Client, LocalCluster
        except ImportError:
            raise RefquantError("more than one worker needs Dask distributed: pip install 'refquant[scale]'") from None
        if self.scheduler is not None:
            try:
                self._client = Client(self.scheduler, timeout="20s")
            except (OSError, TimeoutError) as e:
                raise InputError(f"--scheduler {self.scheduler}: cannot connect: {e}") from None
            return self
        # one kernel thread a worker process: the workers are the parallelism. Set in each
        # worker as it starts (distributed.nanny.environ), before it imports Numba. No pre-spawn
        # variables: a nanny writes those into this process's environment (at every worker
        # restart too), where a changed NUMBA_NUM_THREADS breaks Numba's running thread pool.
        environ = dict(dask.config.get("distributed.nanny.environ", {}) or {})
        environ.update(NUMBA_NUM_THREADS="1")
        self._environ = dict(os.environ)
        try:
            with dask.config.set({"distributed.nanny.environ": environ,
                                  "distributed.nanny.pre-spawn-environ": {}}):
                import logging
                self._cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                             dashboard_address=":0", worker_dashboard_address=":0",
                                             silence_logs=logging.ERROR)
                self._client = Client(self._cluster)
        finally:
            _restore_environ(self._environ)
        return self

    def __exit__(self, *exc) -> bool:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None
        if getattr(self, "_environ", None) is not None:   # a restarted worker's nanny wrote it again
            _restore_environ(self._environ)
        return False

    @property
    def n_slots(self) -> int:
        """How many tasks can run at once."""
        if self._client is None:
            return 1
        n = sum(w.get("nthreads", 1) for w in self._client.scheduler_info(n_workers=-1)["workers"].values())
        return max(1, n)

    def imap(self, fn: Callable, tasks: Iterable, window: Optional[int] = None) -> Iterator:
        """fn(task) for each task, yielded in the order of `tasks`; at most `window` submitted
        tasks are not yet consumed (default: twice the slots)."""
        if self._client is None:
            for t in tasks:
                yield fn(t)
            return
        window = window or 2 * self.n_slots
        pending: deque = deque()
        it = iter(tasks)
        try:
            for t in it:
                pending.append(self._client.submit(fn, t, pure=False))
                if len(pending) >= window:
                    yield _result(pending.popleft())
            while pending:
                yield _result(pending.popleft())
        finally:
            for fut in pending:        # an error, Ctrl-C or an abandoned iterator: stop the rest
                fut.cancel()
            pending.clear()

    def imap_unordered(self, fn: Callable, tasks: Iterable, window: Optional[int] = None) -> Iterator:
        """(index, fn(task)) as tasks finish; at most `window` tasks are submitted and not yet
        consumed (default: four times the slots), so results held here stay bounded."""
        if self._client is None:
            for i, t in enumerate(tasks):
                yield i, fn(t)
            return
        from distributed import as_completed
        window = window or 4 * self.n_slots
        it = enumerate(tasks)
        live: dict = {}
        done = as_completed()

        def submit_next() -> None:
            nxt = next(it, None)
            if nxt is not None:
                fut = self._client.submit(fn, nxt[1], pure=False)
                live[fut.key] = (nxt[0], fut)
                done.add(fut)

        try:
            for _ in range(window):
                submit_next()
            for fut in done:
                i, _ = live.pop(fut.key)
                yield i, _result(fut)
                submit_next()
        finally:
            for _, fut in live.values():    # an error, Ctrl-C or an abandoned iterator
                fut.cancel()
            live.clear()


def conformance_shard(job):
    """One shard of the conformance suite (a task): the report of part i of n."""
    from ..conformance.suite import run
    backend, shard, kw = job
    return run(backend, shard=shard, **kw)


def conformance(rn: Runner, backend, shards: Optional[int] = None, **kw):
    """The conformance suite spread over the runner's workers as `shards` shards (default: four
    a slot), merged into the report an unsharded run gives. `backend` must be loadable by every
    worker (a registered name, 'module:object', or a file path on a shared filesystem)."""
    from ..backend import backend_reference, get_backend
    from ..conformance.suite import merge_shards
    ref = backend_reference(backend)
    if ref is None:
        raise InputError(f"backend {backend!r} cannot be loaded by name on other processes; give it as "
                         f"'module:object' or a file path")
    n = shards or 4 * rn.n_slots
    reports = dict(rn.imap_unordered(conformance_shard, [(ref, (i, n), kw) for i in range(n)]))
    return merge_shards([reports[i] for i in range(n)], threaded=get_backend(ref).threaded)


def current_blas_threads() -> Optional[int]:
    """The thread count of the BLAS NumPy loaded in this process (None: unknown). A float matmul's
    result depends on it (the partition of its sums), so a task that multiplies matrices (GPTQ's
    Hessian and its inverse) runs with the client's count: `blas_like(n)`."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    n = [i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"]
    return n[0] if n else None


def blas_like(n: Optional[int]):
    """A context in which NumPy's BLAS runs on n threads (None: as it is)."""
    if n is None:
        from contextlib import nullcontext
        return nullcontext()
    from ..model.threads import blas_threads
    return blas_threads(n)


def _restore_environ(saved: dict) -> None:
    for k in [k for k in os.environ if k not in saved]:
        del os.environ[k]
    for k, v in saved.items():
        if os.environ.get(k) != v:
            os.environ[k] = v


def _result(fut):
    """A future's result; a task's own exception is raised as it was raised in the task."""
    return fut.result()
