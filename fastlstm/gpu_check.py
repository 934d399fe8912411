"""``fastlstm gpu-check OUTDIR``: what a GPU can tell about fastlstm, in one command whose
stages' time limits hold it to under 8 minutes, first compilations included.

It prints the device and the versions, then runs three stages from the source checkout beside the
package (``pip install --no-deps --no-build-isolation -e .``):

- ``tests``: the real-device tests of both GPU backends and of the drop-in layer on CUDA tensors;
- ``benchmarks``: the GPU benchmark grid (the alphabet shapes, the six reference shapes and the
  batch sweep), fastlstm against cuDNN, with Keras 3 on PyTorch where Keras is installed;
- ``report``: ``fastlstm bench-report`` of those benchmarks.

OUTDIR receives each stage's output (``tests.log``, ``benchmarks.log``, ``report.log``),
``benchmarks.json``, ``bench-report.md`` with its plots, and ``summary.json``: the device, the
versions, the fastlstm commit and each stage's status, seconds and exit code, rewritten whole
after every stage. Each stage is a process group of its own with its own time limit: at the limit
it gets SIGINT (pytest then still writes what it finished, the benchmark JSON included) and
STOP_GRACE seconds later SIGKILL, so that a hang loses that stage and not the run. Ctrl-C does the
same to the running stage, writes the summary and exits 130.

Without a CUDA GPU it says so in one line, runs nothing, writes the summary and exits 0 (CI runs
it so). On a GPU it exits 0 when every stage passed, 1 otherwise.
"""
import importlib.metadata
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import NamedTuple

import fastlstm
from fastlstm.backends import GPU_BACKENDS, available_backends
from fastlstm.utils import write_json
from fastlstm.workers import Interrupted

# tests/ and bench/ of the checkout that an editable install runs from.
SOURCE = pathlib.Path(fastlstm.__file__).resolve().parent.parent
TESTS = ("tests/test_cupy_gpu.py", "tests/test_numba_cuda_gpu.py", "tests/test_keras_layer_gpu.py")
BENCHMARKS = "bench/test_kernels.py"
STOP_GRACE = 5.0  # seconds between a stage's SIGINT and its SIGKILL
SUMMARY = "summary.json"
DISTRIBUTIONS = ("fastlstm", "numpy", "numba", "numba-cuda", "torch", "keras", "pytest", "pytest-benchmark",
                 "matplotlib")


class Stage(NamedTuple):
    name: str  # also its log's name, NAME.log in OUTDIR
    command: list
    limit: float  # seconds
    needs: str = ""  # a file in OUTDIR, written by an earlier stage, without which this one cannot run
    environment: dict = {}  # set for this stage, over this process's environment


def stages(outdir):
    """The three stages, with time limits that add up to under 8 minutes with the grace periods.
    The tests skip tests/conftest.py, whose Hypothesis a GPU machine need not have; each benchmark
    gets at most 0.25 s or 5 rounds, so that the grid fits in the limit."""
    pytest = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
    outdir = outdir.resolve()  # the stages run in the checkout, not here
    results = str(outdir / "benchmarks.json")
    return [
        Stage("tests", [*pytest, "--noconftest", "-rs", *TESTS], 170),
        Stage("benchmarks", [*pytest, BENCHMARKS, "--benchmark-only", "--bench-grid", "gpu", "--bench-device", "gpu",
                             "--benchmark-json", results, "--benchmark-max-time", "0.25",
                             "--benchmark-min-rounds", "5"],
              230, environment={"KERAS_BACKEND": "torch"}),  # Keras's baseline on the GPU, where installed
        Stage("report", [sys.executable, "-m", "fastlstm", "bench-report", results, "--out", str(outdir)], 30,
              needs="benchmarks.json"),
    ]


def versions():
    """The installed version of each distribution that the check involves, None where missing."""
    cupy = importlib.metadata.packages_distributions().get("cupy", ["cupy"])  # cupy-cuda13x, cupy-cuda12x, ...
    found = {}
    for name in (*DISTRIBUTIONS, *cupy):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _cuda_version(number):
    return f"{number // 1000}.{number % 1000 // 10}"


def describe_device():
    """The current CUDA device as CuPy sees it (every GPU backend needs CuPy), and what PyTorch's
    CUDA build reports, where PyTorch is installed."""
    import cupy

    properties = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    found = {
        "name": properties["name"].decode(),
        "compute_capability": f"{properties['major']}.{properties['minor']}",
        "multiprocessors": properties["multiProcessorCount"],
        "memory_gib": round(properties["totalGlobalMem"] / 2**30, 1),
        "driver": _nvidia_driver(),
        "driver_cuda": _cuda_version(cupy.cuda.runtime.driverGetVersion()),
        "runtime_cuda": _cuda_version(cupy.cuda.runtime.runtimeGetVersion()),
    }
    try:
        import torch
    except (ImportError, OSError) as e:  # OSError: a CUDA library of its build is missing
        return {**found, "torch": f"not importable ({e})"}
    return {**found, "torch_cuda": torch.version.cuda, "torch_sees_the_gpu": torch.cuda.is_available(),
            "cudnn": torch.backends.cudnn.version()}


def _nvidia_driver():
    """The NVIDIA driver's version, from nvidia-smi; None without it."""
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", "0"],
                                capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def commit():
    """The checkout's commit, marked when files differ from it; None outside a git checkout."""
    if not (SOURCE / ".git").exists():
        return None
    try:
        head, changes = (subprocess.run(["git", "-C", str(SOURCE), *arguments], capture_output=True, text=True,
                                        timeout=20)
                         for arguments in (["rev-parse", "HEAD"], ["status", "--porcelain", "--untracked-files=no"]))
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + (" with uncommitted changes" if changes.stdout.strip() else "")


def not_run(reason):
    return {"status": "not run", "reason": reason}


def _stop(process):
    """Stops a stage's process group: SIGINT, then SIGKILL for whatever is left STOP_GRACE seconds
    later. Returns the stage's exit code."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # its children too, when the stage itself ended
    except ProcessLookupError:
        pass
    return process.wait()


def _last_line(path):
    lines = path.read_text(errors="replace").strip().splitlines()
    return lines[-1].strip("= ") if lines else ""


def run_stage(stage, outdir):
    """Runs ``stage`` from the checkout in a process group of its own, its output into OUTDIR;
    returns its record. An exception here (Ctrl-C) stops the stage before it propagates."""
    log = outdir / f"{stage.name}.log"
    started = time.monotonic()
    with open(log, "w") as output:
        process = subprocess.Popen(stage.command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                   cwd=SOURCE, env={**os.environ, **stage.environment}, start_new_session=True)
        try:
            exit_code = process.wait(stage.limit)
            status = "passed" if exit_code == 0 else "failed"
        except subprocess.TimeoutExpired:
            exit_code, status = _stop(process), "timed out"
        except BaseException:
            _stop(process)
            raise
    return {"status": status, "exit_code": exit_code, "seconds": round(time.monotonic() - started, 1),
            "limit_seconds": stage.limit, "log": log.name, "result": _last_line(log)}


def run_stages(stages, outdir, summary):
    """Runs ``stages`` in order into ``summary['stages']``, each whatever came of the ones before,
    with a line as each starts and ends; writes OUTDIR/summary.json after each. Ctrl-C marks the
    running stage interrupted and the rest not run, writes the summary, and propagates."""
    for i, stage in enumerate(stages):
        if stage.needs and not (outdir / stage.needs).exists():
            summary["stages"][stage.name] = not_run(f"no {stage.needs} from an earlier stage")
        else:
            print(f"{stage.name}: running, at most {stage.limit:g} s, output in {outdir / stage.name}.log", flush=True)
            try:
                summary["stages"][stage.name] = run_stage(stage, outdir)
            except (Interrupted, KeyboardInterrupt):
                summary["stages"][stage.name] = {"status": "interrupted"}
                summary["stages"].update({later.name: not_run("interrupted") for later in stages[i + 1:]})
                write_summary(outdir, summary)
                raise
        record = summary["stages"][stage.name]
        print(f"{stage.name}: {record['status']}"
              + (f" in {record['seconds']:g} s, exit code {record['exit_code']}: {record['result']}"
                 if "seconds" in record else f" ({record['reason']})"), flush=True)
        write_summary(outdir, summary)


def _device_line(found):
    torch = (f"; PyTorch CUDA {found['torch_cuda']}, cuDNN {found['cudnn']}"
             + ("" if found["torch_sees_the_gpu"] else ", but PyTorch finds no GPU")) if "cudnn" in found else ""
    return (f"device: {found['name']}, compute capability {found['compute_capability']}, "
            f"{found['multiprocessors']} multiprocessors, {found['memory_gib']} GiB; driver {found['driver'] or '?'} "
            f"(CUDA {found['driver_cuda']}), CUDA runtime {found['runtime_cuda']}{torch}")


def _versions_line(summary):
    found = ", ".join(f"{name} {version or 'not installed'}" for name, version in summary["versions"].items())
    return f"versions: {found}; fastlstm commit {summary['commit'] or 'unknown (not a git checkout)'}"


def write_summary(outdir, summary):
    write_json(outdir / SUMMARY, summary)


def _run_none(outdir, summary, reason):
    summary["stages"] = {stage.name: not_run(reason) for stage in stages(outdir)}
    write_summary(outdir, summary)


def gpu_check(outdir):
    """Runs the check into ``outdir`` (a pathlib.Path of an existing directory); returns the exit
    status."""
    gpus = [s for s in available_backends() if s.name in GPU_BACKENDS]
    summary = {"commit": commit(), "source": str(SOURCE), "versions": versions(), "backends": [str(s) for s in gpus],
               "device": None, "stages": {}}
    if not any(s.available for s in gpus):
        details = {s.detail for s in gpus}
        reason = "no CUDA GPU here: " + (details.pop() if len(details) == 1 else
                                         "; ".join(f"{s.name}: {s.detail}" for s in gpus))
        _run_none(outdir, summary, reason)
        print(f"fastlstm gpu-check: {reason}: nothing run, summary in {outdir / SUMMARY}")
        return 0
    summary["device"] = describe_device()
    print(_device_line(summary["device"]))
    print(_versions_line(summary), flush=True)
    missing = [path for path in (*TESTS, BENCHMARKS) if not (SOURCE / path).exists()]
    if missing:
        reason = (f"no source checkout beside the installed fastlstm (no {SOURCE / missing[0]}): install it from "
                  "one with pip install --no-deps --no-build-isolation -e . to run the tests and benchmarks")
        print(f"fastlstm gpu-check: {reason}")
        _run_none(outdir, summary, reason)
    else:
        run_stages(stages(outdir), outdir, summary)
    print(f"wrote {outdir / SUMMARY}")
    return 0 if all(record["status"] == "passed" for record in summary["stages"].values()) else 1
