"""Interrupting ``fastlstm alphabet``: one line, exit 128 + the signal, no process left, no partial
--json. Linux only: it reads the processes' children and states in /proc."""
import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from test_cli import FASTLSTM, NEUTRAL

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads processes in /proc (Linux)")

# Experiment 6 on NumPy, 500 epochs of 1,000 patterns a seed: the runs are well under way, and far from done, when the
# signal comes.
LONG_RUNS = ["alphabet", "--backend", "numpy", "--experiment", "6", "--seeds", "2"]


def _children(pid):
    """The pids of the living children of ``pid``."""
    children = set()
    for task in pathlib.Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children.update(int(child) for child in task.read_text().split())
        except OSError:  # the task ended meanwhile
            pass
    return children


def _alive(pid):
    """Whether ``pid`` runs: neither gone nor a zombie (a container's init may never reap an orphan)."""
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _workers(pid):
    return {child for child in _children(pid)
            if b"spawn_main" in pathlib.Path(f"/proc/{child}/cmdline").read_bytes()}


def _wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)


# Where the runs go: "local:2" for a Dask LocalCluster of two worker processes, else --jobs.
LOCAL_CLUSTER = "local:2"


@contextlib.contextmanager
def _running(tmp_path, jobs):
    """The long runs in ``jobs`` processes (or on LOCAL_CLUSTER), once they run: (the command's
    Popen, the pids of its children); every process of theirs left at the end of the block is
    killed."""
    where = ["--scheduler", jobs] if jobs == LOCAL_CLUSTER else ["--jobs", str(jobs)]
    jobs = 2 if jobs == LOCAL_CLUSTER else jobs
    with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w") as err:
        # A session of its own: a process group, as a terminal gives it, for the Ctrl-C case.
        process = subprocess.Popen([FASTLSTM, *LONG_RUNS, *where, "--json", str(tmp_path / "out.json")],
                                   stdout=out, stderr=err, cwd=NEUTRAL, start_new_session=True)
    children = set()
    try:
        if jobs > 1:
            _wait_until(lambda: len(_workers(process.pid)) == jobs, 60, "worker processes")
        else:
            _wait_until(lambda: " kernels ready in " in (tmp_path / "stdout").read_text(), 60, "warm-up")
        time.sleep(1.0)  # well into the workers' warm-up or the first run
        children = _children(process.pid)
        yield process, children
    finally:
        for pid in [process.pid, *children]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=15)


def _exit_of(process, send, signal_number):
    """(The exit status of ``process`` after ``send(its pid, signal_number)``, the seconds it took.)"""
    sent = time.monotonic()
    send(process.pid, signal_number)
    return process.wait(timeout=15), time.monotonic() - sent


@pytest.mark.parametrize(
    "jobs, signal_number, send",
    [(2, signal.SIGINT, os.kill), (2, signal.SIGTERM, os.kill), (1, signal.SIGINT, os.kill),
     (1, signal.SIGTERM, os.kill), (2, signal.SIGINT, os.killpg), (LOCAL_CLUSTER, signal.SIGINT, os.killpg)],
    ids=["workers-SIGINT-to-main", "workers-SIGTERM-to-main", "here-SIGINT", "here-SIGTERM",
         "workers-Ctrl-C-to-the-group", "local-cluster-Ctrl-C-to-the-group"],
)
def test_a_signal_stops_every_run_at_once_in_one_line(tmp_path, jobs, signal_number, send):
    with _running(tmp_path, jobs) as (process, children):
        if jobs != 1:
            assert len(children) >= 2
        status, seconds = _exit_of(process, send, signal_number)
        assert status == 128 + signal_number and seconds < 5
        _wait_until(lambda: not any(_alive(pid) for pid in children), 2, "end of the children")
    assert (tmp_path / "stderr").read_text() == "fastlstm: interrupted\n"
    assert "Traceback" not in (tmp_path / "stdout").read_text()
    assert sorted(os.listdir(tmp_path)) == ["stderr", "stdout"]  # no --json, whole or partial


def test_workers_leave_a_ctrl_c_to_the_main_process(tmp_path):
    with _running(tmp_path, 2) as (process, children):
        workers = _workers(process.pid)
        for pid in workers:
            os.kill(pid, signal.SIGINT)
        time.sleep(1.0)
        assert all(_alive(pid) for pid in workers) and process.poll() is None
        assert (tmp_path / "stderr").read_text() == ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the workers' parent-death signal is Linux's")
@pytest.mark.parametrize("jobs", [2, LOCAL_CLUSTER])
def test_workers_end_with_the_main_process_even_when_it_is_killed(tmp_path, jobs):
    with _running(tmp_path, jobs) as (process, children):
        assert _exit_of(process, os.kill, signal.SIGKILL)[0] == -signal.SIGKILL and len(children) >= 2
        _wait_until(lambda: not any(_alive(pid) for pid in children), 2, "end of the workers")
