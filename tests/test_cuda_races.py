"""The CUDA C kernels under ThreadSanitizer: both paths, forward and backward, run in a child
process with the TSan runtime preloaded; any report fails the test. And the check itself is shown
to work: the persistent kernels with one barrier removed are reported."""
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

from support.cuda_emulation import KERNELS, build

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
for optin in (96 * 1024, 64):  # the persistent path, then the stepwise one
    fused = FusedLSTM(np, launcher, DeviceLimits(1024, optin, 2))
    inputs = random_inputs(np.random.default_rng(0), 3, 4, 2, 5, np.float32)
    outputs, h, c, saved = fused.forward(*inputs.values(), LSTMOptions(return_sequences=True))
    fused.backward(saved, np.ones_like(outputs), h, c)
print(sorted(set(launcher.launched)))
"""


def _run_under_tsan(library):
    runtime = subprocess.run(["g++", "-print-file-name=libtsan.so.2"], capture_output=True, text=True,
                             check=True).stdout.strip()
    env = dict(os.environ, LD_PRELOAD=runtime, TSAN_OPTIONS=f"exitcode={TSAN_EXIT}",
               PYTHONPATH=os.pathsep.join([str(pathlib.Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    # From a neutral directory, so the child imports the installed fastlstm, not the checkout's.
    return subprocess.run([sys.executable, "-c", CHILD, str(library)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tempfile.gettempdir())


def test_kernels_are_free_of_data_races():
    result = _run_under_tsan(build(sanitizer="thread"))
    assert "ThreadSanitizer" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]
    launched = result.stdout
    assert all(k in launched for k in ("persistent_forward", "persistent_backward", "stepwise_forward",
                                       "stepwise_backward"))


@pytest.mark.parametrize("kernel", ["persistent_forward", "persistent_backward"])
def test_a_removed_barrier_is_reported(tmp_path, kernel):
    shutil.copytree(KERNELS, tmp_path, dirs_exist_ok=True)
    source = tmp_path / "lstm_persistent.cu"
    text = source.read_text()
    # The one barrier inside the chosen kernel's loop over time steps.
    loop = text.index("for (int t", text.index(f"{kernel}("))
    barrier = text.index("__syncthreads();", loop)
    source.write_text(text[:barrier] + text[barrier + len("__syncthreads();"):])
    result = _run_under_tsan(build(sanitizer="thread", kernels=tmp_path))
    assert result.returncode == TSAN_EXIT and "WARNING: ThreadSanitizer: data race" in result.stderr
    assert "lstm_persistent.cu" in result.stderr
