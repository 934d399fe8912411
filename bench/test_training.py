"""numba_cpu's first use: compiling the kernels that training and the layer API need, against
loading them from the disk cache. (One epoch of training per backend is timed by
bench/test_experiments.py.)

Run: pytest bench/test_training.py --benchmark-only   (the seconds are in extra_info)
"""
import os
import subprocess
import sys

import pytest

import fastlstm

NUMBA_CPU = next(s for s in fastlstm.available_backends() if s.name == "numba_cpu")

# Everything the alphabet experiments and the layer API call, in float32: the fused training
# pass and the forward kernel (evaluate, predict), as `fastlstm alphabet` warms them up (in two
# processes at once, kernels/cpu_compile.py), then the layer's backward.
FIRST_USE = """
import time
start = time.perf_counter()
import numpy as np
from fastlstm import experiments, lstm_backward, lstm_forward
experiments.warm_up([5], experiments.FastLSTM("numba_cpu"))
x, kernel, recurrent_kernel = np.ones((1, 2, 1), np.float32), np.ones((1, 8), np.float32), np.ones((2, 8), np.float32)
lstm_backward(lstm_forward(x, kernel, recurrent_kernel, backend="numba_cpu").cache, np.ones((1, 2), np.float32))
print(time.perf_counter() - start)
"""


@pytest.mark.skipif(not NUMBA_CPU.available, reason=str(NUMBA_CPU))
def test_numba_cpu_first_use_compiles_once_then_loads_from_the_cache(benchmark, tmp_path):
    """Two fresh processes sharing an empty cache directory: the first compiles and saves, the
    second loads. Each reports the seconds from its start to the end of that first use."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))

    def first_use():
        run = subprocess.run([sys.executable, "-c", FIRST_USE], env=env, capture_output=True, text=True, check=True,
                             cwd=tmp_path)  # the installed package, not the checkout
        return float(run.stdout.split()[-1])

    benchmark.group = "numba_cpu first use"
    compiling = benchmark.pedantic(first_use, rounds=1, iterations=1)
    cached = first_use()
    benchmark.extra_info.update(compile_seconds=compiling, cached_seconds=cached)
    assert any(tmp_path.rglob("*.nbi")) and cached < compiling
