"""Worker processes of one thread each, for runs spread over the cores.

- :class:`WorkerPool`: a ``concurrent.futures.ProcessPoolExecutor`` whose spawned workers run one
  thread each, leave a Ctrl-C to this process and end with it.
- :func:`wait_for`: the results of futures in their order, with the number done on a progress line.
- :func:`stop_children`: ends every worker at once.
- :func:`blocked`: signals held back in the calling thread, and in the threads and processes it starts.
- :func:`interruptible`: SIGINT and SIGTERM raise :class:`Interrupted`, so that the main process
  can stop its workers and end in one line; :func:`raise_if_interrupted` raises it again where it
  was lost.
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
        if exception is not None:
            # The workers first: a pool shut down without waiting keeps its manager thread running
            # on a reset state, which could then hang the interpreter's exit on finding its
            # workers killed (CPython gh-132969); with them gone it ends at once.
            stop_children()
        self.shutdown(wait=True, cancel_futures=True)
        return False


# The longest a wait for runs sleeps at a time, then looks whether a signal came (see
# raise_if_interrupted): an untimed wait would sleep through one whose handler's exception was lost,
# or that the kernel gave to another thread (Dask's client starts threads that do not block it).
WAKE_SECONDS = 0.1


def wait_for(futures, label):
    """The results of ``futures`` in their order, once all are done, with 'label: k/n runs done' on
    a progress line meanwhile; a worker's exception is raised as soon as it comes back, with the
    worker's traceback as its cause."""
    progress = Progress(label, counts="{}/{} runs done")
    pending = set(futures)
    try:
        progress(0, len(futures))
        while pending:
            done, pending = concurrent.futures.wait(pending, WAKE_SECONDS, concurrent.futures.FIRST_COMPLETED)
            raise_if_interrupted()
            for future in done:
                future.result()
            if done:
                progress(len(futures) - len(pending), len(futures))
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


_received = []  # the signal that interrupted the block of interruptible(), once its handler ran


def _interrupt(signal_number, frame):
    # Once only: a second signal must not cut short the stopping of the workers.
    for name in (signal.SIGINT, signal.SIGTERM):
        signal.signal(name, signal.SIG_IGN)
    _received.append(signal_number)
    raise Interrupted(signal_number)


def raise_if_interrupted():
    """Raises Interrupted if a signal came inside interruptible()'s block. Its handler raised it
    already, but wherever the main thread ran Python at that moment: in a garbage collector's
    callback or a finalizer (Dask's client installs a callback) Python cannot raise it, and hands
    it to sys.unraisablehook instead, and the signal is ignored from then on."""
    if _received:
        raise Interrupted(_received[0])


@contextlib.contextmanager
def interruptible():
    """SIGINT and SIGTERM raise Interrupted inside the block; their handlers are restored after it.
    An Interrupted that Python could not raise (see raise_if_interrupted) is not printed."""
    _received.clear()
    before = {name: signal.signal(name, _interrupt) for name in (signal.SIGINT, signal.SIGTERM)}
    unraisable_hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None if isinstance(unraisable.exc_value, Interrupted) \
        else unraisable_hook(unraisable)
    try:
        yield
    finally:
        sys.unraisablehook = unraisable_hook
        for name, handler in before.items():
            signal.signal(name, handler)
        _received.clear()
