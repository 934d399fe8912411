"""``fastlstm gpu-check``: without a GPU (here and in CI) the installed command itself; the path
it takes on a GPU with a pretend device and small stand-in stages (its real stages need one):
time limits, failures, Ctrl-C and a missing checkout; and the real stages' commands, which must
stay valid where nothing of them runs."""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

import fastlstm
from fastlstm import cli, gpu_check
from fastlstm.backends import GPU_BACKENDS

A_GPU = [s.name for s in fastlstm.available_backends() if s.name in GPU_BACKENDS and s.available]

# `fastlstm gpu-check OUTDIR` on a pretend GPU, with stand-in stages: sys.argv[2] is JSON, a list
# of Stage fields with Python code in place of the command, sys.argv[3] a SOURCE to pretend.
PRETEND_GPU = """
import json, pathlib, sys
from fastlstm import cli, gpu_check
from fastlstm.backends import BackendStatus

gpu_check.available_backends = lambda: [BackendStatus("cupy", True, "a pretend GPU")]
gpu_check.describe_device = lambda: dict(name="Pretend GPU", compute_capability="9.0", multiprocessors=132,
                                         memory_gib=79.1, driver="580.1", driver_cuda="13.0", runtime_cuda="13.0")
gpu_check.stages = lambda outdir: [gpu_check.Stage(**dict(stage, command=[sys.executable, "-c", stage["command"]]))
                                   for stage in json.loads(sys.argv[2])]
if sys.argv[3]:
    gpu_check.SOURCE = pathlib.Path(sys.argv[3])
raise SystemExit(cli.main(["gpu-check", sys.argv[1]]))
"""
PASSES = "print('3 passed')"
FAILS = "print('1 failed'); raise SystemExit(3)"
# Starts a child that ignores SIGINT, so that only SIGKILL ends it, and prints its process id once
# it does; then both sleep.
HANGS = ("import subprocess, sys, time; "
         "subprocess.Popen([sys.executable, '-c', 'import os, signal, time; "
         "signal.signal(signal.SIGINT, signal.SIG_IGN); print(os.getpid(), flush=True); time.sleep(60)']); "
         "time.sleep(60)")


def pretend_gpu(outdir, stages, source=""):
    """Starts the check on a pretend GPU with ``stages``; returns the process."""
    return subprocess.Popen([sys.executable, "-c", PRETEND_GPU, str(outdir), json.dumps(stages), str(source)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def summary(outdir):
    return json.loads((outdir / "summary.json").read_text())


def alive(pid):
    """Whether process ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def ends(pid, seconds=5.0):
    """Whether process ``pid`` ends within ``seconds``: a SIGKILL sent to it takes effect a moment
    later, which on a loaded machine can be after the sender has exited."""
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.skipif(bool(A_GPU), reason=f"a GPU is here ({A_GPU}): the check would run for real")
def test_without_a_gpu_it_says_so_in_one_line_and_writes_the_summary(tmp_path):
    command = pathlib.Path(sys.executable).with_name("fastlstm")  # the installed entry point
    result = subprocess.run([str(command), "gpu-check", str(tmp_path / "out")], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastlstm gpu-check: no CUDA GPU here: "), lines
    written = summary(tmp_path / "out")
    assert written["device"] is None and written["versions"]["fastlstm"] == fastlstm.__version__
    assert list(written["stages"]) == ["tests", "benchmarks", "report"]
    for record in written["stages"].values():
        assert record["status"] == "not run" and record["reason"].startswith("no CUDA GPU here: ")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["summary.json"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to tell that the stage's child ended")
def test_a_stage_past_its_limit_is_killed_with_its_children_and_the_next_stages_run(tmp_path):
    check = pretend_gpu(tmp_path, [dict(name="tests", command=HANGS, limit=3),
                                   dict(name="benchmarks", command=FAILS, limit=30),
                                   dict(name="report", command=PASSES, limit=30)])
    output, _ = check.communicate(timeout=60)
    assert check.returncode == 1, output
    assert "device: Pretend GPU, compute capability 9.0" in output
    stages = summary(tmp_path)["stages"]
    assert stages["tests"]["status"] == "timed out" and stages["tests"]["seconds"] < 3 + gpu_check.STOP_GRACE
    assert stages["benchmarks"]["status"] == "failed" and stages["benchmarks"]["exit_code"] == 3
    assert stages["benchmarks"]["result"] == "1 failed"
    assert stages["report"] == {**stages["report"], "status": "passed", "exit_code": 0, "result": "3 passed"}
    child = int((tmp_path / "tests.log").read_text().split()[0])
    assert ends(child)


def test_every_stage_passing_exits_0_and_a_missing_input_is_not_run(tmp_path):
    check = pretend_gpu(tmp_path, [dict(name="tests", command=PASSES, limit=30),
                                   dict(name="report", command=PASSES, limit=30, needs="benchmarks.json")])
    output, _ = check.communicate(timeout=60)
    assert check.returncode == 1, output
    assert summary(tmp_path)["stages"]["report"] == {"status": "not run",
                                                     "reason": "no benchmarks.json from an earlier stage"}
    check = pretend_gpu(tmp_path, [dict(name="tests", command=PASSES, limit=30)])
    output, _ = check.communicate(timeout=60)
    assert check.returncode == 0, output
    assert output.splitlines()[-1] == f"wrote {tmp_path / 'summary.json'}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to tell that the stage's child ended")
def test_ctrl_c_stops_the_stage_writes_the_summary_and_exits_130(tmp_path):
    check = pretend_gpu(tmp_path, [dict(name="tests", command=HANGS, limit=60),
                                   dict(name="report", command=PASSES, limit=30)])
    for line in check.stdout:
        if line.startswith("tests: running"):
            break
    log = tmp_path / "tests.log"
    while not (log.exists() and log.read_text()):  # until the stage has started its child
        time.sleep(0.05)
    check.send_signal(signal.SIGINT)
    output, _ = check.communicate(timeout=60)
    assert check.returncode == 130, output
    assert output.strip().splitlines()[-1] == "fastlstm: interrupted"
    assert summary(tmp_path)["stages"] == {"tests": {"status": "interrupted"},
                                           "report": {"status": "not run", "reason": "interrupted"}}
    assert ends(int(log.read_text().split()[0]))


def test_without_a_source_checkout_it_says_so_and_runs_no_stage(tmp_path):
    (tmp_path / "site-packages").mkdir()
    check = pretend_gpu(tmp_path, [dict(name="tests", command=PASSES, limit=30)], tmp_path / "site-packages")
    output, _ = check.communicate(timeout=60)
    assert check.returncode == 1, output
    [line] = [line for line in output.splitlines() if "no source checkout" in line]
    assert "pip install --no-deps --no-build-isolation -e ." in line
    assert summary(tmp_path)["stages"]["tests"]["status"] == "not run"
    assert not (tmp_path / "tests.log").exists()


@pytest.mark.skipif(bool(A_GPU), reason=f"a GPU is here ({A_GPU}): the stages would run for real")
def test_the_real_stages_commands_are_valid_here(tmp_path):
    """Without a GPU the tests stage skips everything with the reason, and the benchmark stage
    times nothing (every case skipped, or none collected: pytest's exit code 5), rather than either
    failing on its arguments."""
    tests, benchmarks, report = gpu_check.stages(tmp_path)
    # As a user starts them: in the checkout (this one, which an install that is not editable does
    # not point at), and not inside this test's pytest-xdist worker, whose variables would make
    # pytest-benchmark refuse --benchmark-only.
    environment = {name: value for name, value in os.environ.items() if not name.startswith("PYTEST_")}
    checkout = pathlib.Path(__file__).resolve().parents[1]
    results = {stage.name: subprocess.run(stage.command, capture_output=True, text=True, cwd=checkout,
                                          env={**environment, **stage.environment}, timeout=300)
               for stage in (tests, benchmarks)}
    output = {name: result.stdout[-3000:] + result.stderr[-3000:] for name, result in results.items()}
    assert results["tests"].returncode == 0, output["tests"]
    assert re.fullmatch(r"\d+ skipped in .*", output["tests"].strip().splitlines()[-1].strip("= ")), output["tests"]
    assert "SKIPPED" in output["tests"] and "needs a CUDA GPU" in output["tests"]
    assert results["benchmarks"].returncode in (0, 5), output["benchmarks"]
    assert not (tmp_path / "benchmarks.json").exists()
    assert report.needs == "benchmarks.json" and report.command[-1] == str(tmp_path)


def test_the_stages_write_into_outdir_from_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, benchmarks, report = gpu_check.stages(pathlib.Path("out"))
    results = str(tmp_path / "out" / "benchmarks.json")
    assert benchmarks.command[benchmarks.command.index("--benchmark-json") + 1] == results
    assert report.command[-4:] == ["bench-report", results, "--out", str(tmp_path / "out")]


def test_an_outdir_it_cannot_write_in_is_an_error_before_anything_runs(tmp_path, capsys):
    (tmp_path / "a file").touch()
    with pytest.raises(SystemExit) as exit:
        cli.main(["gpu-check", str(tmp_path / "a file")])
    assert exit.value.code == 2
    assert f"argument OUTDIR: cannot write in {tmp_path / 'a file'}" in capsys.readouterr().err
