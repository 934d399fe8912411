"""Runs on a Dask cluster, for ``fastlstm alphabet --scheduler ADDRESS``.

:class:`Cluster` connects to a Dask scheduler, or starts a ``LocalCluster`` for ``local:N``,
checks that every worker can run fastlstm's chosen backend, and gives a
``concurrent.futures.Executor`` on the cluster for :func:`fastlstm.experiments.run_many`. A run
on a worker that is lost meanwhile (killed, out of memory) is run again on another: Dask
reschedules a lost worker's tasks by itself, and ``retries`` runs again a task that raised.

Dask is imported here only, and only once a cluster is asked for (``pip install
".[cluster]"``): ``import fastlstm`` and the commands without ``--scheduler`` do without it, and
without asyncio, which this module's functions import as Dask does (about 65 ms that every
``fastlstm`` command would otherwise spend, since the command line imports this module).
"""
import functools
import logging
import signal

import fastlstm
from fastlstm.workers import ONE_THREAD, blocked, stop_children

LOCAL = "local:"  # local:N, a LocalCluster of N worker processes on this machine
CONNECT_SECONDS = 3  # how long a scheduler may take to answer before the command gives up
WORKERS_SECONDS = 10  # how long a scheduler without workers is given for one to join
RETRIES = 2  # the times a run that raised (a MemoryError, say) is run again before its error is the command's
CLOSE_SECONDS = 1  # how long the client, or a LocalCluster's worker after a failure, is given to close
WARM_UP_PLUGIN = "fastlstm-warm-up"


class ClusterError(Exception):
    """The cluster cannot run the study: no scheduler answers, it has no workers, or a worker
    lacks fastlstm or the backend; the message says which, in one line."""


def _local_cluster(workers):
    """A LocalCluster of ``workers`` processes of one thread each, on 127.0.0.1, quiet.

    Its processes start with SIGINT blocked, as WorkerPool's workers do: a Ctrl-C in a terminal
    reaches the whole process group, and it is this process's to handle. They inherit the mask of
    the thread that spawns them, started by this one inside the block (and so do the workers that
    replace lost ones); multiprocessing's resource tracker is started before, since starting it
    unblocks SIGINT in the thread that does.
    """
    from multiprocessing import resource_tracker

    from distributed import LocalCluster

    resource_tracker.ensure_running()
    try:
        with blocked({signal.SIGINT}):
            # No dashboard; the scheduler's HTTP server (health checks) on any free port rather than on 8787,
            # which another cluster may hold.
            return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                                env=ONE_THREAD, silence_logs=logging.CRITICAL)
    except BaseException:  # a signal, say: no cluster to close the processes already started with
        stop_children()
        raise


def _what_is_missing(backend, version):
    """On a worker: None where it can run fastlstm ``version`` on ``backend``, else what it lacks."""
    from fastlstm.backends import resolve

    if fastlstm.__version__ != version:
        return f"has fastlstm {fastlstm.__version__}, not {version} as here"
    try:
        resolve(backend)
    except Exception as e:  # BackendUnavailable, or whatever probing the backend raised there
        return str(e)
    return None


@functools.cache
def _setup_plugin():
    """The WorkerPlugin class that calls ``initializer(*initargs)`` on every worker, those that
    join later included; made once, on first use, since its base comes with Dask."""
    from distributed import WorkerPlugin

    class Setup(WorkerPlugin):
        name = WARM_UP_PLUGIN

        def __init__(self, initializer, initargs):
            self.initializer, self.initargs = initializer, initargs

        def setup(self, worker):
            import asyncio

            # Off the worker's event loop, which must answer the scheduler meanwhile (compiling takes seconds).
            return asyncio.to_thread(self.initializer, *self.initargs)

    return Setup


async def _end_workers(nannies):
    """Closes a LocalCluster's ``nannies`` (Dask's Nanny), each killing its worker process if that
    has not ended within CLOSE_SECONDS; a closed nanny restarts none."""
    import asyncio

    await asyncio.gather(*(nanny.close(timeout=CLOSE_SECONDS) for nanny in nannies))


class Cluster:
    """A Dask cluster to run on: ``address`` is a scheduler's (``tcp://10.0.0.5:8786``) or
    ``local:N`` for a ``LocalCluster`` of N worker processes of one thread each on this machine
    (Numba's threads limited by their environment, BLAS's by Dask's ``pre-spawn-environ``).

    Connecting raises :class:`ClusterError` where no scheduler answers within
    :data:`CONNECT_SECONDS`, none of its workers joins within :data:`WORKERS_SECONDS`, or a worker
    cannot import fastlstm (the version here) or run ``backend``. ``address`` (the scheduler's),
    ``workers`` and ``threads`` say what it found.

    Leaving its ``with`` block closes the client, which cancels the runs not started (a remote
    worker ends the run it is in), and a LocalCluster with its processes; left by an exception, a
    LocalCluster's processes are killed if they have not ended within :data:`CLOSE_SECONDS`.
    """

    def __init__(self, address, backend):
        try:
            from distributed import Client
        except ImportError as e:
            raise ClusterError(f'needs Dask\'s distributed: pip install "fastlstm[cluster]" ({e})') from None

        self.local, self.registered = None, False
        if address.startswith(LOCAL):
            self.local = _local_cluster(int(address[len(LOCAL):]))
            address = self.local.scheduler_address
        try:
            self.client = Client(address, timeout=CONNECT_SECONDS)
        except Exception as e:  # refused, timed out, not an address, or what answered speaks no Dask
            self._close_local(failed=False)
            raise ClusterError(f"no Dask scheduler answers at {address} within {CONNECT_SECONDS} s "
                               f"({type(e).__name__}: {e})") from None
        try:
            self._check(backend)
        except BaseException:
            self.close(failed=True)
            raise

    def _check(self, backend):
        try:
            self.client.wait_for_workers(1, timeout=WORKERS_SECONDS)
        except TimeoutError:
            raise ClusterError(f"the Dask scheduler at {self.address} has no workers "
                               f"(none joined in {WORKERS_SECONDS} s)") from None
        missing = self.client.run(_what_is_missing, backend, fastlstm.__version__, on_error="return")
        # A worker without fastlstm cannot even load the check: Dask returns the error it met instead.
        problems = [f"worker {worker}: " + (f"cannot import fastlstm ({lack})" if isinstance(lack, Exception) else lack)
                    for worker, lack in sorted(missing.items()) if lack is not None]
        if problems:
            raise ClusterError("; ".join(problems))
        threads = self.client.nthreads()
        self.workers, self.threads = len(threads), sum(threads.values())

    @property
    def address(self):
        return self.client.scheduler.address

    def executor(self, initializer, initargs):
        """A ``concurrent.futures.Executor`` on the cluster's workers, each of which, those that join
        later included, runs ``initializer(*initargs)`` first (and has, when this returns)."""
        self.client.register_plugin(_setup_plugin()(initializer, initargs))
        self.registered = True
        return self.client.get_executor(retries=RETRIES, pure=False)

    def close(self, failed=False):
        """Closes the client, and the LocalCluster if any; after a failure (``failed``) an error in
        closing is passed over, the failure being the one to report."""
        try:
            if self.registered and self.local is None:  # a shared cluster's later workers need not warm up for us
                self.client.unregister_worker_plugin(WARM_UP_PLUGIN)
            self.client.close(timeout=CLOSE_SECONDS)
        except Exception:
            if not failed:
                raise
        finally:
            self._close_local(failed)

    def _close_local(self, failed):
        """Closes the LocalCluster; after a failure its worker processes first, each killed if it has
        not ended within CLOSE_SECONDS, since Dask would wait for the runs under way."""
        if self.local is None:
            return
        if failed:
            # What was under way with the killed workers fails, unread: no concern of the user's.
            self.local.loop.asyncio_loop.set_exception_handler(lambda loop, context: None)
            self.local.sync(_end_workers, list(self.local.workers.values()))
        self.local.close()

    def __enter__(self):
        return self

    def __exit__(self, kind, exception, traceback):
        self.close(failed=exception is not None)
        from distributed import KilledWorker

        if isinstance(exception, KilledWorker):  # Dask gave up a run: a worker died under it once too often
            raise ClusterError("a run was under way on a worker lost more times than Dask allows "
                               "(its distributed.scheduler.allowed-failures); the last was "
                               f"{exception.last_worker.address}") from None
        return False

