"""The CUDA C kernels under ThreadSanitizer: the three paths, forward and backward, run in a child
process with the TSan runtime preloaded; any report fails the test. And the check itself is shown
to work: the persistent kernels with one block barrier removed, and the cooperative kernels with
one grid barrier removed, are reported."""
import shutil
import subprocess

import pytest

from support.cuda_emulation import KERNELS, build, run_child

TSAN_EXIT = 66
CHILD = """
import sys
import numpy as np
from support.cuda_emulation import EmulatedLauncher
from fastlstm.backends import LSTMOptions
from fastlstm.backends.fused import FusedLSTM
from fastlstm.backends.plan import DeviceLimits
from support.lstm_testing import random_inputs

launcher = EmulatedLauncher(sys.argv[1])
# The persistent path, the cooperative one (3 blocks of 2 units, a thread taking three row groups),
# then the stepwise one.
for limits in (DeviceLimits(1024, 96 * 1024, 2), DeviceLimits(2, 96 * 1024, 3), DeviceLimits(1024, 64, 2)):
    fused = FusedLSTM(np, launcher, limits, cooperative=True)
    inputs = random_inputs(np.random.default_rng(0), 9, 4, 2, 5, np.float32)
    outputs, h, c, saved = fused.forward(*inputs.values(), LSTMOptions(return_sequences=True))
    fused.backward(saved, np.ones_like(outputs), h, c)
print(sorted(set(launcher.launched)))
"""


def _run_under_tsan(library):
    runtime = subprocess.run(["g++", "-print-file-name=libtsan.so.2"], capture_output=True, text=True,
                             check=True).stdout.strip()
    return run_child(CHILD, library, 300, LD_PRELOAD=runtime, TSAN_OPTIONS=f"exitcode={TSAN_EXIT}")


def test_kernels_are_free_of_data_races():
    result = _run_under_tsan(build(sanitizer="thread"))
    assert "ThreadSanitizer" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]
    launched = result.stdout
    assert all(k in launched for k in ("persistent_forward", "persistent_backward", "cooperative::forward",
                                       "cooperative::backward", "stepwise_forward", "stepwise_backward"))


@pytest.mark.parametrize("source_name, kernel, barrier", [
    ("lstm_persistent.cu", "persistent_forward", "__syncthreads();"),
    ("lstm_persistent.cu", "persistent_backward", "__syncthreads();"),
    ("lstm_cooperative.cu", "forward", "grid_sync(barrier);"),
    ("lstm_cooperative.cu", "backward", "grid_sync(barrier);"),
])
def test_a_removed_barrier_is_reported(tmp_path, source_name, kernel, barrier):
    shutil.copytree(KERNELS, tmp_path, dirs_exist_ok=True)
    source = tmp_path / source_name
    text = source.read_text()
    # The one barrier inside the chosen kernel's loop over time steps.
    loop = text.index("for (int t", text.index(f"\n{kernel}("))
    at = text.index(barrier, loop)
    source.write_text(text[:at] + text[at + len(barrier):])
    result = _run_under_tsan(build(sanitizer="thread", kernels=tmp_path))
    assert result.returncode == TSAN_EXIT and "WARNING: ThreadSanitizer: data race" in result.stderr
    assert source_name in result.stderr
