"""The installed ``fastlstm`` command."""
import io
import json
import subprocess
import sys
import tempfile

import pytest

from fastlstm.cli import Progress


NEUTRAL = tempfile.gettempdir()  # run from here, so `python -m fastlstm` finds the installed package


def run(*args):
    return subprocess.run(args, capture_output=True, text=True, check=True, cwd=NEUTRAL).stdout


@pytest.mark.parametrize("command", [["fastlstm"], [sys.executable, "-m", "fastlstm"]])
def test_backends_lists_each_backend_with_its_status(command):
    out = run(*command, "backends")
    assert any(line.startswith("numpy: ok (CPU, NumPy ") for line in out.splitlines())
    cupy = next(line for line in out.splitlines() if line.startswith("cupy: "))
    assert "fastlstm.kernels" not in cupy  # the installed package, with its kernels, was the one run


def test_alphabet_over_seeds_reports_the_spread_and_writes_json(tmp_path):
    path = tmp_path / "out.json"
    out = run("fastlstm", "alphabet", "--experiment", "3", "4", "--epochs", "2", "--seeds", "3",
              "--backend", "numpy", "--json", str(path))
    report = json.loads(path.read_text())
    results = report["results"]
    assert [(r["experiment"], r["seed"]) for r in results] == [(3, 7), (3, 8), (3, 9), (4, 7), (4, 8), (4, 9)]
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
    out = run("fastlstm", "alphabet", "--keras", "--experiment", "5", "--epochs", "2", "--json", str(path))
    frameworks = [r["framework"] for r in json.loads(path.read_text())["results"]]
    assert frameworks == ["fastlstm", "keras"]
    assert "experiment 5, seed 7, keras (tensorflow): accuracy" in out
    row = out.splitlines()[-2]
    assert row.startswith("| 5 | stateful") and row.rstrip(" |").endswith("x")  # the speed-up column


@pytest.mark.parametrize(
    "args, words",
    [(["--backend", "nope"], ["'nope'"]), (["--experiment", "8"], ["invalid choice", "8"]),
     (["--seeds", "0"], ["--seeds", "at least 1"])],
)
def test_bad_arguments_are_errors_that_name_them(args, words):
    result = subprocess.run(["fastlstm", "alphabet", *args], capture_output=True, text=True, cwd=NEUTRAL)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert all(w in result.stderr for w in words)


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
