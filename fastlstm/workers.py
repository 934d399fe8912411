"""Worker processes of one thread each, for runs spread over the cores.

- :class:`WorkerPool`: a ``concurrent.futures.ProcessPoolExecutor`` whose spawned workers run one
  thread each, leave a Ctrl-C to this process and end with it.
- :func:`wait_for`: the results of futures in their order, with the number done on a progress line.
- :func:`stop_children`: ends every worker at once.
- :func:`blocked`: signals held back in the calling thread, and in the threads and processes it starts.
- :func:`interruptible`: SIGINT and SIGTERM raise :class:`Interrupted`, so that the main process
  can stop its workers and end in one line.
"""
import concurrent.futures
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import time

from fastlstm.utils import Progress

# How many threads OpenMP, OpenBLAS, MKL and Numba start in a process: read once, when each loads.
ONE_THREAD = dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"), "1")


@contextlib.contextmanager
def _environment(values):
    """``os.environ`` with ``values`` set inside the block, restored when the block is left."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


@contextlib.contextmanager
def blocked(signals):
    """The calling thread with ``signals`` blocked inside the block: held back until it is left."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows has no signal masks
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _die_with(parent):
    """On Linux, has the kernel kill this process when its parent ends, even by SIGKILL, so that no
    worker outlives the main process; elsewhere nothing."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # it ended before the line above
            os._exit(1)


def _start_worker(parent, initializer, initargs):
    _die_with(parent)
    if initializer:
        initializer(*initargs)


class WorkerPool(concurrent.futures.ProcessPoolExecutor):
    """A ProcessPoolExecutor of ``jobs`` worker processes of one thread each;
    ``initializer(*initargs)`` runs first in every worker.

    The workers are spawned: forking a process whose BLAS or Numba threads already run is unsafe.
    A spawned worker imports this program's main module, and NumPy and its BLAS with it, before an
    initializer could run, so the one-thread limits go into the environment it starts with. The
    executor starts its processes inside ``submit``, and none later (a worker that dies breaks the
    pool instead of being replaced), so the limits are set around each submission only and this
    process's environment is restored after it. SIGINT is blocked there too, and so stays blocked
    in the workers: a Ctrl-C in a terminal, which reaches the whole process group, is for this
    process to handle. On Linux a worker ends with this process.

    Leaving its ``with`` block cancels the calls not started yet, and waits for the running ones
    unless the block is left by an exception: then it ends them at once (:func:`stop_children`).
    """

    def __init__(self, jobs, initializer=None, initargs=()):
        super().__init__(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                         initargs=(os.getpid(), initializer, initargs))

    def submit(self, function, /, *args, **kwargs):
        with _environment(ONE_THREAD), blocked({signal.SIGINT}):
            return super().submit(function, *args, **kwargs)

    def __exit__(self, kind, exception, traceback):
        self.shutdown(wait=exception is None, cancel_futures=True)
        if exception is not None:
            stop_children()
        return False


def wait_for(futures, label):
    """The results of ``futures`` in their order, once all are done, with 'label: k/n runs done' on
    a progress line meanwhile; a worker's exception is raised as soon as it comes back, with the
    worker's traceback as its cause."""
    progress = Progress(label, counts="{}/{} runs done")
    try:
        progress(0, len(futures))
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            future.result()
            progress(done, len(futures))
    finally:
        progress.close()
    return [future.result() for future in futures]


def stop_children(grace=1.0):
    """Ends every process this one started with multiprocessing: SIGTERM, then SIGKILL for any still
    running ``grace`` seconds later."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()
            child.join()


class Interrupted(BaseException):
    """SIGINT or SIGTERM came; ``signal_number`` says which. A BaseException, as KeyboardInterrupt,
    so that no ``except Exception`` takes it for an error."""

    def __init__(self, signal_number):
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


def _interrupt(signal_number, frame):
    # Once only: a second signal must not cut short the stopping of the workers.
    for name in (signal.SIGINT, signal.SIGTERM):
        signal.signal(name, signal.SIG_IGN)
    raise Interrupted(signal_number)


@contextlib.contextmanager
def interruptible():
    """SIGINT and SIGTERM raise Interrupted inside the block; their handlers are restored after it."""
    before = {name: signal.signal(name, _interrupt) for name in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for name, handler in before.items():
            signal.signal(name, handler)
