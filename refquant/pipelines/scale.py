"""Scale-out: a whole-file job's independent tasks on every local core, or on Dask distributed.

A pipeline first computes its plan (each tensor's type, byte size and place in the output),
then hands its tasks — row ranges of tensors, or whole linear layers — to a `Runner`, and
writes each task's bytes where the plan put them. `Runner.imap` returns the results in
submission order, whatever order the tasks finish in, so the output is byte-identical to a
serial run with any number of workers; at most `window` results are held at once, so the
client's memory is bounded by a few tasks, not by the model.

Where the tasks run (N workers = N cores' worth of work):

* `workers=1`, no scheduler: in this process, one after another, on one core: each task's
  kernels run on `threads` kernel threads (default 1; `task_threads`).
* `workers=N` (default `None`: every core, `default_workers`), no scheduler: N threads of this
  process (`concurrent.futures`), one kernel thread each. The kernels release the GIL (Numba's
  `nogil=True`; NumPy's loops), so N tasks run on N cores with no process to start, no import
  to repeat and no byte to send: the cheapest engine on one machine, from 2 cores to 64.
* `scheduler="local"`: a local Dask cluster of N worker processes, one thread each (numba's
  kernels get one thread a worker: `NUMBA_NUM_THREADS=1`, set before the workers start): its
  start costs seconds, but a worker that dies is restarted and its tasks re-run.
* `scheduler="tcp://HOST:PORT"`: a running Dask cluster. Workers read the input themselves,
  so it must be at the same path on every worker (a shared filesystem); the client writes the
  output. A task whose result depends on NumPy's BLAS thread count (GPTQ) runs with the
  client's (`blas_like`).

Faults: on a Dask cluster a worker that dies mid-task has its tasks re-run by the scheduler
elsewhere (Dask's `distributed.scheduler.allowed-failures`); everywhere a task that raises
stops the run with that task's error (the remaining tasks are cancelled, the running ones
finish first); so does Ctrl-C. The caller's atomic write then leaves no output.
"""
from __future__ import annotations

import os
import threading
from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Optional

from ..errors import InputError, RefquantError

WORKERS_ENV = "REFQUANT_WORKERS"     # the command line's default number of workers
LOCAL = "local"                      # --scheduler local: a Dask cluster of worker processes here


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


def check_workers(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"--workers must be a whole number >= 1, got {n!r}")
    return n


_task = threading.local()


def current_task_threads() -> Optional[int]:
    """The kernel threads a task running in this thread gets (None: not set by a Runner; a
    Dask worker's kernels run on its NUMBA_NUM_THREADS)."""
    return getattr(_task, "threads", None)


@contextmanager
def task_threads(backend):
    """Run a task's kernels on the runner's kernel thread count (`current_task_threads`):
    set on the backend for this thread (Numba's count is per thread), restored after."""
    n = current_task_threads()
    if n is None or not getattr(backend, "threaded", False):
        yield
        return
    old = backend.get_num_threads()
    n = max(1, min(n, backend.max_threads()))
    if n == old:
        yield
        return
    backend.set_num_threads(n)
    try:
        yield
    finally:
        backend.set_num_threads(old)


def _init_thread(threads: int) -> None:
    _task.threads = threads


class Runner:
    """Runs a function over tasks: serially, on threads of this process, on a local Dask
    cluster of processes, or on a remote one.

    Use as a context manager; the threads or the cluster (when this runner started one) stop on
    exit. `threads`: kernel threads per task (default 1; serial and thread workers)."""

    def __init__(self, workers: Optional[int] = 1, scheduler: Optional[str] = None, threads: Optional[int] = None):
        self.scheduler = scheduler
        self.workers = default_workers() if workers is None else check_workers(workers)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InputError(f"--threads must be a whole number >= 1, got {threads!r}")
        self.threads = threads or 1
        self._client = None
        self._cluster = None
        self._pool = None
        self._saved_threads = None

    @property
    def serial(self) -> bool:
        return self.scheduler is None and self.workers == 1

    @property
    def writes_locally(self) -> bool:
        """Whether the tasks run on this machine (they can write the output file themselves)."""
        return self.scheduler in (None, LOCAL)

    @property
    def batches(self) -> bool:
        """Whether tasks are worth grouping (each costs a round trip to a Dask scheduler)."""
        return self._client is not None

    def __enter__(self) -> "Runner":
        if self.scheduler is None:
            self._saved_threads = (current_task_threads(),)
            _task.threads = self.threads       # the serial tasks run in this thread
            if self.workers > 1:
                from concurrent.futures import ThreadPoolExecutor
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="refquant-worker",
                                                initializer=_init_thread, initargs=(self.threads,))
            return self
        try:
            import dask
            from distributed import Client, LocalCluster
        except ImportError:
            raise RefquantError("--scheduler needs Dask distributed: pip install 'refquant[scale]'") from None
        if self.scheduler != LOCAL:
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
        environ.update(NUMBA_NUM_THREADS=str(self.threads))
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
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._saved_threads is not None:
            _task.threads = self._saved_threads[0]
            self._saved_threads = None
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
            return self.workers if self._pool is not None else 1
        n = sum(w.get("nthreads", 1) for w in self._client.scheduler_info(n_workers=-1)["workers"].values())
        return max(1, n)

    def _submit(self, fn, t):
        if self._pool is not None:
            return self._pool.submit(fn, t)
        return self._client.submit(fn, t, pure=False)

    def _stop(self, futs) -> None:
        """Cancel the futures not yet started; on threads, wait for the running ones (they may be
        writing into the output, which the caller removes next)."""
        for fut in futs:
            fut.cancel()
        if self._pool is not None:
            from concurrent.futures import wait
            wait(list(futs))

    def imap(self, fn: Callable, tasks: Iterable, window: Optional[int] = None) -> Iterator:
        """fn(task) for each task, yielded in the order of `tasks`; at most `window` submitted
        tasks are not yet consumed (default: twice the slots)."""
        if self._client is None and self._pool is None:
            for t in tasks:
                yield fn(t)
            return
        window = window or 2 * self.n_slots
        pending: deque = deque()
        it = iter(tasks)
        try:
            for t in it:
                pending.append(self._submit(fn, t))
                if len(pending) >= window:
                    yield _result(pending.popleft())
            while pending:
                yield _result(pending.popleft())
        finally:
            self._stop(pending)        # an error, Ctrl-C or an abandoned iterator: stop the rest
            pending.clear()

    def imap_unordered(self, fn: Callable, tasks: Iterable, window: Optional[int] = None) -> Iterator:
        """(index, fn(task)) as tasks finish; at most `window` tasks are submitted and not yet
        consumed (default: four times the slots), so results held here stay bounded."""
        if self._client is None and self._pool is None:
            for i, t in enumerate(tasks):
                yield i, fn(t)
            return
        if self._pool is not None:
            yield from self._imap_unordered_threads(fn, tasks, window)
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
            self._stop([fut for _, fut in live.values()])   # an error, Ctrl-C or an abandoned iterator
            live.clear()

    def _imap_unordered_threads(self, fn, tasks, window):
        # each future reports itself on a queue when done: one wait per result, whatever the
        # number of tasks in flight (concurrent.futures.wait walks every pending future at each
        # call, quadratic in a model's hundreds of thousands of slabs)
        import queue
        window = window or 4 * self.n_slots
        it = enumerate(tasks)
        live: dict = {}
        finished: queue.SimpleQueue = queue.SimpleQueue()

        def submit_next() -> None:
            nxt = next(it, None)
            if nxt is not None:
                fut = self._pool.submit(fn, nxt[1])
                live[fut] = nxt[0]
                fut.add_done_callback(finished.put)

        try:
            for _ in range(window):
                submit_next()
            while live:
                done = [finished.get()]
                while not finished.empty():
                    done.append(finished.get())
                for fut in sorted(done, key=live.get):     # in submission order among those done
                    i = live.pop(fut)
                    yield i, _result(fut)
                    submit_next()
        finally:
            self._stop(list(live))
            live.clear()
            while not finished.empty():    # futures stopped or finished meanwhile: their results go now
                finished.get()


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


_blas = threading.Condition()
_blas_held: dict = {"n": None, "tasks": 0, "limit": None}


def _free_blas_control() -> None:
    """threadpoolctl (3.6 on) lets one Python thread at a time set a process-wide OpenBLAS's
    count and silently ignores the limits other threads set: free it, so this thread's apply."""
    try:
        from threadpoolctl import OpenBLASController
        OpenBLASController.clear_controlling_thread(force=True)
    except (ImportError, AttributeError):     # an older threadpoolctl: any thread's limit applies
        pass


_BLAS_PER_THREAD: list = []


def _blas_count_per_thread() -> bool:
    """Whether NumPy's BLAS keeps a thread count per calling thread (an OpenMP build: OpenMP's
    count is the thread's) rather than one for the process (OpenBLAS on pthreads, as NumPy's
    wheels ship it). Asked once."""
    if not _BLAS_PER_THREAD:
        from threadpoolctl import threadpool_info
        layers = {i.get("threading_layer") for i in threadpool_info() if i.get("user_api") == "blas"}
        _BLAS_PER_THREAD.append("openmp" in layers)
    return _BLAS_PER_THREAD[0]


@contextmanager
def blas_like(n: Optional[int]):
    """A context in which NumPy's BLAS runs on n threads (None: as it is). Where the count is
    the process's, not the thread's (OpenBLAS on pthreads): tasks on concurrent threads share
    it, the first in sets it and the last out restores it (a task that asks for another count
    waits until none runs), so no task's sums run on another count than its own. Where it is
    the thread's (OpenMP), each task sets its own. Not nested."""
    if n is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    if _blas_count_per_thread():
        from ..model.threads import blas_threads
        with blas_threads(n):
            yield
        return
    with _blas:
        _blas.wait_for(lambda: _blas_held["tasks"] == 0 or _blas_held["n"] == n)
        if _blas_held["tasks"] == 0:
            _free_blas_control()
            _blas_held["limit"] = threadpool_limits(limits=n, user_api="blas")  # this thread controls it
            _blas_held["n"] = n
        _blas_held["tasks"] += 1
    try:
        yield
    finally:
        with _blas:
            _blas_held["tasks"] -= 1
            if _blas_held["tasks"] == 0:
                try:
                    _free_blas_control()
                    _blas_held["limit"].restore_original_limits()
                    _free_blas_control()
                finally:                   # whatever restoring raised, no waiting task hangs
                    _blas_held["limit"] = _blas_held["n"] = None
                    _blas.notify_all()


def _restore_environ(saved: dict) -> None:
    for k in [k for k in os.environ if k not in saved]:
        del os.environ[k]
    for k, v in saved.items():
        if os.environ.get(k) != v:
            os.environ[k] = v


def _result(fut):
    """A future's result; a task's own exception is raised as it was raised in the task."""
    return fut.result()
