"""The installed ``fastlstm`` command."""
import concurrent.futures
import gc
import io
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numba
import pytest

import fastlstm
from fastlstm import cli, experiments
from fastlstm.utils import Progress, usable_cores, write_json
from fastlstm.workers import Interrupted, WorkerPool, interruptible, wait_for


NEUTRAL = tempfile.gettempdir()  # run from here, so `python -m fastlstm` finds the installed package
# The command installed beside this interpreter, found without its environment on PATH.
FASTLSTM = shutil.which("fastlstm", path=os.path.dirname(sys.executable)) or "fastlstm"


def run(*args):
    return subprocess.run(args, capture_output=True, text=True, check=True, cwd=NEUTRAL).stdout


@pytest.mark.parametrize("command", [[FASTLSTM], [sys.executable, "-m", "fastlstm"]])
def test_backends_lists_each_backend_with_its_status(command):
    out = run(*command, "backends")
    assert any(line.startswith("numpy: ok (CPU, NumPy ") for line in out.splitlines())
    cupy = next(line for line in out.splitlines() if line.startswith("cupy: "))
    assert "fastlstm.kernels" not in cupy  # the installed package, with its kernels, was the one run


def test_alphabet_over_seeds_reports_the_spread_and_writes_json(tmp_path):
    path = tmp_path / "out.json"
    out = run(FASTLSTM, "alphabet", "--experiment", "3", "4", "--epochs", "2", "--seeds", "3",
              "--backend", "numpy", "--json", str(path))
    report = json.loads(path.read_text())
    results = report["results"]
    assert [(r["experiment"], r["seed"]) for r in results] == [(3, 7), (3, 8), (3, 9), (4, 7), (4, 8), (4, 9)]
    assert report["jobs"] == min(usable_cores(), 6)  # by default a worker a core, at most one a run
    for summary in report["summaries"]:
        accuracies = [r["accuracy"] for r in results if r["experiment"] == summary["experiment"]]
        assert summary["fastlstm"]["min"] == min(accuracies) and summary["fastlstm"]["runs"] == 3
        assert summary["keras"] is None
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) == 4 and table[2].startswith("| 3 | 3-char window as 3 time steps")
    low, high = min(r["accuracy"] for r in results[:3]), max(r["accuracy"] for r in results[:3])
    assert f"[{low:.2f}, {high:.2f}]" in table[2] and "/3 " in table[2]


def test_alphabet_with_keras_shows_both_frameworks_side_by_side(tmp_path):
    path = tmp_path / "out.json"
    out = run(FASTLSTM, "alphabet", "--keras", "--experiment", "5", "--epochs", "2", "--json", str(path))
    frameworks = [r["framework"] for r in json.loads(path.read_text())["results"]]
    assert frameworks == ["fastlstm", "keras"]
    assert "experiment 5, seed 7, keras (tensorflow): accuracy" in out
    row = out.splitlines()[-2]
    assert row.startswith("| 5 | stateful") and row.rstrip(" |").endswith("x")  # the speed-up column


def _alphabet_in(jobs, path):
    out = run(FASTLSTM, "alphabet", "--experiment", "5", "6", "--epochs", "2", "--seeds", "2",
              "--jobs", str(jobs), "--json", str(path))
    return out, json.loads(path.read_text())


def test_an_experiment_runs_with_its_variant_beside_it_on_a_sequence(tmp_path, capsys):
    path = tmp_path / "out.json"
    status = cli.main(["alphabet", "--backend", "numpy", "--experiment", "1", "9", "--epochs", "1", "--jobs", "1",
                       "--sequence", "aaaabbbccd", "--json", str(path)])
    out = capsys.readouterr().out
    assert status == 0 and "sequence 'aaaabbbccd'; " in out
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out.splitlines()[-4:-1]]
    # Nothing published for this sequence, so no count of runs reaching it either.
    assert [row[:3] + row[4:5] for row in rows] == [["1", "one char -> one char", "-", "-"],
                                                     ["9", "3 chars -> next 3 chars", "-", "-"],
                                                     ["11", "as 9, encoder-decoder", "-", "-"]]
    report = json.loads(path.read_text())
    assert report["arguments"]["sequence"] == "aaaabbbccd" and report["arguments"]["experiment"] == [1, 9, 11]
    for result in report["results"][1:]:
        assert result["sequence"] == "aaaabbbccd"
        pattern, predicted, expected = result["demonstrations"]["training patterns"][0]
        assert (pattern, expected) == ("aaa", "abb") and len(predicted) == 3 and set(predicted) <= set("abcd")


def test_worker_processes_give_the_same_runs_as_this_process(tmp_path):
    here, here_report = _alphabet_in(1, tmp_path / "here.json")
    workers, workers_report = _alphabet_in(2, tmp_path / "workers.json")
    assert "; runs in this process" in here and "; runs in 2 worker processes" in workers
    assert (here_report["jobs"], workers_report["jobs"]) == (1, 2)
    runs = [[(r["experiment"], r["seed"], r["accuracy"], r["loss"], r["demonstrations"]) for r in report["results"]]
            for report in (here_report, workers_report)]
    assert runs[0] == runs[1] and [run[:2] for run in runs[0]] == [(5, 7), (5, 8), (6, 7), (6, 8)]
    assert len({run[3] for run in runs[0]}) == 4  # the seeds' losses differ: not one run repeated
    for out, report in ((here, here_report), (workers, workers_report)):
        # The warm-up's line comes before the first run's, its time in the JSON.
        line = next(line for line in out.splitlines() if " kernels ready in " in line)
        assert re.fullmatch(r"\w+ kernels ready in \d+\.\d s \(untimed warm-up, .*\)", line)
        assert out.index(line) < out.index("== experiment 5")
        assert report["warm_up_seconds"] > 0 and f" in {report['warm_up_seconds']:.1f} s " in line


def test_workers_run_one_thread_each_and_leave_this_process_as_it_was():
    before = dict(os.environ)
    with WorkerPool(2) as executor:
        futures = [executor.submit(os.getenv, name) for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")]
        assert wait_for(futures, "threads") == ["1", "1"]
    assert dict(os.environ) == before
    with WorkerPool(1) as executor:
        assert wait_for([executor.submit(numba.get_num_threads)], "numba") == [1]


def test_a_signal_whose_exception_python_could_not_raise_still_ends_the_wait(capsys):
    """A Ctrl-C whose handler runs inside a garbage collector's callback (as Dask's client installs
    one): Python drops the handler's exception there, and the signal is ignored from then on, so
    the command once waited for runs that no longer stopped."""
    def callback(phase, info):
        if phase == "start":
            signal.raise_signal(signal.SIGINT)  # its handler runs here, before raise_signal returns

    handler = signal.getsignal(signal.SIGINT)  # SIG_IGN in a pytest-xdist worker
    never = concurrent.futures.Future()
    timer = threading.Timer(5.0, never.set_result, [None])  # ends the wait where the signal was lost
    timer.start()
    gc.callbacks.append(callback)
    try:
        with pytest.raises(Interrupted), interruptible():
            gc.collect()
            gc.callbacks.remove(callback)
            start = time.monotonic()
            wait_for([never], "runs")
    finally:
        timer.cancel()
        if callback in gc.callbacks:
            gc.callbacks.remove(callback)
    assert time.monotonic() - start < 1
    assert "Interrupted" not in capsys.readouterr().err  # not printed as an exception Python ignored
    assert signal.getsignal(signal.SIGINT) is handler


def test_a_block_left_by_an_exception_ends_the_workers_and_then_the_pools_own_thread():
    """Left by an exception (an interrupt, say), the pool ends the running calls' workers, then its
    manager thread, before the exception goes on: nothing of it is left for the interpreter's exit
    to wait on."""
    threads_before = set(threading.enumerate())
    with pytest.raises(Interrupted):
        with WorkerPool(2) as executor:
            futures = [executor.submit(time.sleep, 60) for _ in range(2)]
            _wait_until_running(futures)
            raise Interrupted(signal.SIGTERM)
    assert all(isinstance(f.exception(timeout=10), concurrent.futures.process.BrokenProcessPool) for f in futures)
    assert multiprocessing.active_children() == []
    assert set(threading.enumerate()) <= threads_before


def _wait_until_running(futures, timeout=60):
    deadline = time.monotonic() + timeout
    while not all(f.running() for f in futures):
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.05)


def test_a_workers_exception_is_raised_with_its_traceback():
    with WorkerPool(2) as executor, pytest.raises(ValueError, match="math domain error") as raised:
        futures = [executor.submit(math.sqrt, x) for x in (4.0, -1.0, 9.0)]
        wait_for(futures, "square roots")
    assert "Traceback" in str(raised.value.__cause__)  # the worker's, not only this process's
    assert futures[0].result() == 2.0


@pytest.mark.parametrize(
    "args, words",
    [(["--backend", "nope"], ["'nope'"]), (["--experiment", "12"], ["invalid choice", "12"]),
     (["--sequence", "ABC"], ["--sequence", "'ABC' has 3 symbols", "experiment 3", "at least 4"]),
     (["--sequence", "aaaa"], ["--sequence", "at least 2 distinct symbols", "got 'aaaa'"]),
     (["--seeds", "0"], ["--seeds", "at least 1"]), (["--jobs", "0"], ["--jobs", "at least 1"]),
     (["--scheduler", "local:0"], ["--scheduler", "local:N", "at least 1", "got 'local:0'"]),
     (["--scheduler", "local:two"], ["--scheduler", "local:N", "got 'local:two'"]),
     (["--scheduler", ""], ["--scheduler", "needs a scheduler's address"]),
     (["--jobs", "2", "--scheduler", "local:2"], ["--scheduler", "not allowed with argument --jobs"]),
     (["--seed", "-1"], ["--seed", "0 to 4294967295", "got -1"]),
     (["--seed", "4294967296"], ["--seed", "0 to 4294967295", "got 4294967296"]),
     (["--seed", "4294967295", "--seeds", "2"], ["--seeds", "last seed", "4294967296", "over 4294967295"]),
     (["--epsilon", "-1"], ["--epsilon", "finite number above 0", "got -1"]),
     (["--epsilon", "nan"], ["--epsilon", "finite number above 0", "got nan"]),
     (["--epsilon", "0"], ["--epsilon", "finite number above 0", "got 0"]),
     (["--json", os.path.join(NEUTRAL, "no such folder", "out.json")], ["--json", "no such folder", "does not exist"]),
     (["--json", NEUTRAL], ["--json", NEUTRAL, "names a directory"]), (["--json", ""], ["--json", "names a directory"]),
     (["--json", "no such folder/"], ["--json", "no such folder/", "names a directory"]),
     (["--json", "/sys/out.json"], ["--json", "cannot write in /sys"])],
)
def test_bad_arguments_are_errors_that_name_them_before_any_run(args, words):
    # Short runs, should a bad argument be let through.
    result = subprocess.run([FASTLSTM, "alphabet", "--backend", "numpy", "--experiment", "3", "--epochs", "1", *args],
                            capture_output=True, text=True, cwd=NEUTRAL, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stdout == ""
    error = result.stderr.splitlines()[-1]
    assert error.startswith("fastlstm alphabet: error: ") and all(w in error for w in words), error


def test_json_is_written_whole_or_not_at_all(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"runs": [1, 2]})
    assert json.loads(path.read_text()) == {"runs": [1, 2]}
    with pytest.raises(TypeError):
        write_json(path, {"runs": [3, object()]})  # fails half-way through
    assert json.loads(path.read_text()) == {"runs": [1, 2]} and os.listdir(tmp_path) == ["out.json"]
    with pytest.raises(TypeError):
        write_json(tmp_path / "new.json", {"runs": [object()]})
    assert os.listdir(tmp_path) == ["out.json"]


def test_json_holds_no_nan_or_infinity_which_strict_parsers_refuse(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"loss": float("nan"), "runs": [{"loss": float("inf"), "accuracy": 4.0}, (-float("inf"),)]})

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    assert json.loads(path.read_text(), parse_constant=refuse) == \
        {"loss": None, "runs": [{"loss": None, "accuracy": 4.0}, [None]]}


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_rewrites_one_line_on_a_terminal_and_stays_silent_elsewhere():
    terminal, log = _Terminal(), io.StringIO()
    for stream in (terminal, log):
        progress = Progress("experiment 6, seed 7, fastlstm", stream)
        for epoch in range(1, 501):
            progress(epoch, 500)
        progress.close()
    shown = terminal.getvalue()
    assert shown.startswith("\rexperiment 6, seed 7, fastlstm: epoch 1/500")
    assert "epoch 500/500" in shown and "\n" not in shown and shown.endswith("\r\033[K")
    assert shown.count("\r") < 20  # throttled, not one write per epoch
    assert log.getvalue() == ""


def test_progress_counts_runs_in_its_own_words():
    terminal = _Terminal()
    progress = Progress("experiment 6", terminal, counts="{}/{} runs done")
    progress(37, 100)
    assert terminal.getvalue() == "\rexperiment 6: 37/100 runs done\033[K"


def test_a_diverged_run_is_reported_in_its_line_the_table_the_json_and_the_exit_status(tmp_path, monkeypatch, capsys):
    run_as_asked = experiments.run

    def with_epsilon_0(number, framework, seed, recurrent_activation, epsilon, *rest, **options):
        # Adam with epsilon 0 divides 0 by 0: experiment 4's loss turns NaN in an epoch, 3's not in 2.
        return run_as_asked(number, framework, seed, recurrent_activation, 0.0, *rest, **options)

    monkeypatch.setattr(experiments, "run", with_epsilon_0)
    path = tmp_path / "out.json"
    status = cli.main(["alphabet", "--backend", "numpy", "--experiment", "3", "4", "--epochs", "2", "--jobs", "1",
                       "--json", str(path)])
    out, err = capsys.readouterr()
    assert status == 1
    assert err.splitlines()[-1] == "fastlstm: diverged (loss not finite): experiment 4, seed 7 (fastlstm)"
    lines = out.splitlines()
    assert next(line for line in lines if line.startswith("experiment 4, seed 7,")).endswith(", DIVERGED")
    assert not next(line for line in lines if line.startswith("experiment 3, seed 7,")).endswith("DIVERGED")
    rows = [line for line in lines if line.startswith("| 3 ") or line.startswith("| 4 ")]
    assert "diverged" not in rows[0] and "| 0.00, 1 diverged " in rows[1]
    report = json.loads(path.read_text())
    assert [r["diverged"] for r in report["results"]] == [False, True]
    assert report["results"][1]["loss"] is None  # NaN, written as JSON's null
    assert [s["fastlstm"]["diverged"] for s in report["summaries"]] == [0, 1]


def test_version_prints_the_packages_version(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out == f"fastlstm {fastlstm.__version__}\n"
    assert run(FASTLSTM, "--version") == "fastlstm 0.1.0\n"


@pytest.mark.parametrize("command", [[], ["backends"], ["bench-report"], ["gpu-check"], ["alphabet"]])
def test_help_is_plain_text_without_markup(command, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([*command, "--help"])
    shown = capsys.readouterr().out
    assert exited.value.code == 0 and shown.startswith(" ".join(["usage: fastlstm", *command]))
    assert "`" not in shown and ":func:" not in shown and ":class:" not in shown
    if command:  # the subcommand's summary atop its own help
        assert shown.split("\n\n")[1].replace("\n", " ").startswith(("list", "tables", "on a GPU", "the alphabet"))


def test_a_demonstration_prints_its_count_right_and_its_distinct_wrong_predictions_only():
    letters = experiments.ALPHABET
    rows = [(letters[i % 24:i % 24 + 2], letters[i % 24 + 2], letters[i % 24 + 2]) for i in range(1000)]
    rows[3] = rows[27] = rows[51] = ("DE", "G", "F")  # one wrong prediction, three times
    for k in range(25):  # and 25 distinct ones
        rows[100 + k] = (letters[k] * 3, letters[k], letters[k + 1])
    result = experiments.Result(6, "x", "fastlstm", "numpy", 7, 1, 98.9, 97.2, 0.1, 1.0,
                                {"training patterns": rows, "20 random patterns": rows[60:80]})
    full, short = cli._demonstration_lines(result)
    assert full.startswith("  training patterns (972/1000 right); wrong: DE->G x3, ")
    assert full.endswith(", and 6 more") and full.count("->") == cli.WRONG_SHOWN and len(full) < 400
    assert short == "  20 random patterns (20/20 right)"
