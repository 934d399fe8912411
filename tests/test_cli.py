"""The installed ``fastlstm`` command."""
import subprocess
import sys

import pytest


def run(*args):
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("command", [["fastlstm"], [sys.executable, "-m", "fastlstm"]])
def test_backends_lists_each_backend_with_its_status(command):
    out = run(*command, "backends")
    assert out.splitlines()[0].startswith("numpy: ok (CPU, NumPy ")


def test_alphabet_runs_a_forward_and_backward_pass():
    out = run("fastlstm", "alphabet", "--backend", "numpy")
    assert "x (25, 1, 1), 32 units, backend numpy" in out
    assert "forward: outputs (25, 32)" in out
    assert all(f"|d {name}|" in out for name in ("x", "kernel", "recurrent_kernel", "bias", "h0", "c0"))


def test_an_unknown_backend_is_an_error_that_names_it():
    result = subprocess.run(["fastlstm", "alphabet", "--backend", "nope"], capture_output=True, text=True)
    assert result.returncode != 0 and "'nope'" in result.stderr
