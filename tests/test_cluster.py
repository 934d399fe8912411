"""``fastlstm alphabet --scheduler``: a study run on a real Dask cluster, a LocalCluster of two
worker processes or a ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1, gives the
JSON results of ``--jobs 1``, a worker killed mid-study included; a scheduler that does not answer,
or a worker that lacks fastlstm or the backend, fails the command in one line."""
import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import distributed
import numba
import pytest
import threadpoolctl

from fastlstm import cli, cluster
from test_cli import FASTLSTM, NEUTRAL

DASK = shutil.which("dask", path=os.path.dirname(sys.executable)) or "dask"
# Two experiments, four seeds, on NumPy (nothing to compile in fresh processes): experiment 3's
# runs take a tenth of a second, 7's half a second, so 7's are under way when 3's are printed.
STUDY = ["alphabet", "--backend", "numpy", "--experiment", "3", "7", "--epochs", "10", "--seeds", "4"]


def _results(path):
    """The Results of a --json file, without their times, which differ from run to run."""
    return [{k: v for k, v in result.items() if k != "seconds"} for result in json.loads(path.read_text())["results"]]


@pytest.fixture(scope="module")
def here(tmp_path_factory):
    """The study's results with --jobs 1."""
    path = tmp_path_factory.mktemp("here") / "out.json"
    assert cli.main([*STUDY, "--jobs", "1", "--json", str(path)]) == 0
    results = _results(path)
    assert [(r["experiment"], r["seed"]) for r in results] == [(n, s) for n in (3, 7) for s in range(7, 11)]
    assert len({r["loss"] for r in results}) == 8  # not one run repeated
    return results


def _study(tmp_path, scheduler, **popen):
    """The study's command on ``scheduler``, writing tmp_path/out.json: its Popen, its output in
    tmp_path/stdout and tmp_path/stderr."""
    with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w") as err:
        return subprocess.Popen([FASTLSTM, *STUDY, "--scheduler", scheduler, "--json", str(tmp_path / "out.json")],
                                stdout=out, stderr=err, cwd=NEUTRAL, **popen)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _dask_cluster(tmp_path, preloads=(None, None)):
    """A ``dask scheduler`` and a ``dask worker`` of one thread per item of ``preloads`` (a script
    each runs first, or None), on 127.0.0.1, every worker joined: (the scheduler's address, the
    workers' Popens, each the leader of its own process group: its nanny and worker process)."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = open(tmp_path / "dask.log", "w")
    processes = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                  stdout=log, stderr=log, cwd=NEUTRAL, start_new_session=True)]
    try:
        for preload in preloads:
            processes.append(subprocess.Popen(
                [DASK, "worker", address, "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard",
                 *(["--preload", str(preload)] if preload else [])],
                stdout=log, stderr=log, cwd=NEUTRAL, start_new_session=True))
        with distributed.Client(address, timeout=30) as client:
            client.wait_for_workers(len(preloads), timeout=60)
        yield address, processes[1:]
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def _worker_processes(pid):
    """The pids of ``pid``'s children that are LocalCluster workers (spawned by multiprocessing)."""
    children = [int(child) for task in pathlib.Path(f"/proc/{pid}/task").glob("*/children")
                for child in task.read_text().split()]
    return [child for child in children if b"spawn_main" in pathlib.Path(f"/proc/{child}/cmdline").read_bytes()]


def _wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.02)


def test_a_local_cluster_gives_the_runs_of_jobs_1(tmp_path, here):
    with socket.socket() as dashboard:
        # Dask's default dashboard port taken, as by another cluster (unless something holds it already).
        with contextlib.suppress(OSError):
            dashboard.bind(("", 8787))
            dashboard.listen()
        assert _study(tmp_path, "local:2").wait(timeout=120) == 0
    assert (tmp_path / "stderr").read_text() == ""  # no warning that the port was taken
    report = json.loads((tmp_path / "out.json").read_text())
    assert _results(tmp_path / "out.json") == here
    assert (report["jobs"], report["workers"]) == (2, 2) and report["scheduler"].startswith("tcp://127.0.0.1:")
    out = (tmp_path / "stdout").read_text()
    assert f"; runs on the Dask cluster at {report['scheduler']}: 2 workers, 2 threads\n" in out
    assert out.index(" kernels ready in ") < out.index("== experiment 3")


def test_a_separately_started_scheduler_and_workers_give_the_runs_of_jobs_1(tmp_path, here):
    with _dask_cluster(tmp_path) as (address, workers):
        assert _study(tmp_path, address).wait(timeout=120) == 0
    report = json.loads((tmp_path / "out.json").read_text())
    assert _results(tmp_path / "out.json") == here
    assert (report["scheduler"], report["workers"], report["jobs"]) == (address, 2, 2)
    assert (tmp_path / "stderr").read_text() == ""


def _kill_a_worker_mid_study(tmp_path, **popen):
    """The study on ``local:2`` with one of its two worker processes SIGKILLed while runs are under
    way on both; returns the command's exit status."""
    process = _study(tmp_path, "local:2", **popen)
    try:
        # Experiment 3's runs are printed once all are done: 7's are then under way on both workers.
        _wait_for(lambda: "experiment 3, seed 10," in (tmp_path / "stdout").read_text(), 90, "experiment 3")
        workers = _worker_processes(process.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        return process.wait(timeout=120)
    finally:
        process.kill()
        process.wait()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="finds the worker processes in /proc (Linux)")
def test_a_worker_killed_mid_study_loses_no_run(tmp_path, here):
    assert _kill_a_worker_mid_study(tmp_path) == 0
    assert _results(tmp_path / "out.json") == here
    assert "Traceback" not in (tmp_path / "stderr").read_text()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="finds the worker processes in /proc (Linux)")
def test_a_run_whose_workers_die_more_often_than_dask_allows_fails_the_command_in_one_line(tmp_path):
    # With no failure allowed, Dask gives up the runs of the first worker lost.
    no_failure = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    assert _kill_a_worker_mid_study(tmp_path, env=no_failure) == 2
    [line] = (tmp_path / "stderr").read_text().splitlines()
    assert line.startswith("fastlstm alphabet: error: --scheduler local:2: ")
    assert "a run was under way on a worker lost more times than Dask allows" in line


def test_a_scheduler_that_does_not_answer_fails_fast_in_one_line():
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    start = time.monotonic()
    result = subprocess.run([FASTLSTM, *STUDY, "--scheduler", address], capture_output=True, text=True, cwd=NEUTRAL,
                            timeout=60)
    assert time.monotonic() - start < cluster.CONNECT_SECONDS + 5
    assert result.returncode == 2 and result.stdout == "" and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"fastlstm alphabet: error: --scheduler {address}: no Dask scheduler answers "
                                    f"at {address} within {cluster.CONNECT_SECONDS} s (")


def test_a_worker_without_fastlstm_or_the_backend_fails_the_command_in_one_line_naming_it(tmp_path):
    # Preloads that make each worker's imports of fastlstm or of Numba fail, as where they are not installed.
    without = {}
    for module in ("fastlstm", "numba"):
        without[module] = tmp_path / f"without_{module}.py"
        without[module].write_text(f"import sys\nsys.modules[{module!r}] = None\n")
    with _dask_cluster(tmp_path, list(without.values())) as (address, _):
        with distributed.Client(address, timeout=10) as client:
            lacking = {module: worker for worker, module in client.run(
                lambda: "fastlstm" if sys.modules.get("fastlstm", 0) is None else "numba").items()}
        failures = {backend: subprocess.run([FASTLSTM, "alphabet", "--backend", backend, "--experiment", "3",
                                             "--epochs", "1", "--scheduler", address],
                                            capture_output=True, text=True, cwd=NEUTRAL, timeout=60)
                    for backend in ("numba_cpu", "numpy")}
    for backend, result in failures.items():
        assert result.returncode == 2 and result.stdout == "" and len(result.stderr.splitlines()) == 1
        assert result.stderr.startswith(f"fastlstm alphabet: error: --scheduler {address}: ")
        assert f"worker {lacking['fastlstm']}: cannot import fastlstm (" in result.stderr
    assert f"worker {lacking['numba']}: backend numba_cpu: unavailable (not installed" in failures["numba_cpu"].stderr
    assert lacking["numba"] not in failures["numpy"].stderr  # it runs NumPy's


def test_local_cluster_workers_run_one_thread_each_set_up_first_and_leave_a_ctrl_c_here(tmp_path):
    set_up = tmp_path / "set up"  # made by each worker's set-up
    with cluster.Cluster("local:1", "numpy") as dask:
        assert (dask.workers, dask.threads) == (1, 1)
        executor = dask.executor(os.mkdir, (str(set_up),))
        assert set_up.is_dir()
        assert executor.submit(numba.get_num_threads).result() == 1
        pools = executor.submit(threadpoolctl.threadpool_info).result()
        assert pools and all(pool["num_threads"] == 1 for pool in pools)
        assert signal.SIGINT in executor.submit(signal.pthread_sigmask, signal.SIG_BLOCK, []).result()
        # A worker that replaces a lost one is set up too.
        set_up.rmdir()
        (lost, pid), = dask.client.run(os.getpid).items()
        os.kill(pid, signal.SIGKILL)
        _wait_for(lambda: dask.client.nthreads().keys() - {lost}, 60, "replacement worker")
        _wait_for(set_up.is_dir, 30, "set-up of the replacement worker")
