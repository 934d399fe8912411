"""fastlstm.keras.LSTM with Keras's PyTorch backend on CUDA tensors, the DLPack path from PyTorch
to fastlstm's GPU backends, against keras.layers.LSTM: tests/keras_layer/torch_cuda_suite.py, in a
process of its own (KERAS_BACKEND must be set before keras is imported), once per GPU backend.
Each skips with the reason where that backend, Keras or a CUDA build of PyTorch is missing."""
import importlib
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import pytest

import fastlstm
from fastlstm.backends import GPU_BACKENDS

TESTS = pathlib.Path(__file__).parent


def skip_unless_it_can_run(backend):
    status = next(s for s in fastlstm.available_backends() if s.name == backend)
    if not status.available:
        pytest.skip(f"needs a CUDA GPU: {status.detail}")
    for module in ("keras", "torch"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"needs {module}, which is not installed")
    torch = importlib.import_module("torch")
    if not torch.cuda.is_available():
        pytest.skip(f"needs a CUDA build of PyTorch: torch {torch.__version__} finds no CUDA device")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_the_drop_in_on_cuda_tensors_matches_keras(backend):
    skip_unless_it_can_run(backend)
    # Without tests/conftest.py, whose Hypothesis a GPU machine need not have (fastlstm gpu-check runs this).
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(TESTS / "keras_layer" / "torch_cuda_suite.py"), "-k", backend,
         "-q", "-p", "no:cacheprovider", "--noconftest", "--rootdir", str(TESTS.parent),
         "-c", str(TESTS.parent / "pyproject.toml")],
        capture_output=True, text=True, env=dict(os.environ, KERAS_BACKEND="torch"), cwd=tempfile.gettempdir(),
        timeout=300)
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    # With and without return_sequences, nothing skipped.
    assert re.match(r"2 passed\b", summary) and not re.search(r"failed|error|skipped", summary), summary
