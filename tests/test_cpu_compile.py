"""The numba_cpu warm-up on a fresh install: each kernel compiled once, in one of two processes
(kernels/cpu_compile.py)."""
import json
import os
import subprocess
import sys

import pytest

import fastlstm

NUMBA_CPU = next(s for s in fastlstm.available_backends() if s.name == "numba_cpu")

# Warms the six experiments up, experiment 9 (a softmax Dense on every step's output) and 11 (an
# encoder-decoder, trained layer by layer), and prints every compile of this process: [function,
# signature].
WARM_UP = """
import json
from numba.core import event
compiles = []

class Compiles(event.Listener):
    def on_start(self, ev):
        function = ev.data["dispatcher"].py_func
        compiles.append([function.__module__ + "." + function.__qualname__, str(ev.data["args"])])

    def on_end(self, ev):
        pass

event.register("numba:compile", Compiles())
from fastlstm import experiments
experiments.warm_up([*range(1, 7), 9, 11], experiments.FastLSTM("numba_cpu"))
print(json.dumps(compiles))
"""


@pytest.mark.skipif(not NUMBA_CPU.available, reason=str(NUMBA_CPU))
def test_the_warm_up_compiles_each_kernel_once_and_leaves_the_forward_kernels_to_the_child(tmp_path):
    run = subprocess.run([sys.executable, "-c", WARM_UP], env=dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path)),
                         capture_output=True, text=True, check=True, cwd=tmp_path)
    compiles = json.loads(run.stdout.splitlines()[-1])
    ours = [pair for pair in compiles if pair[0].startswith("fastlstm.kernels.")]
    repeated = [pair for pair in ours if ours.count(pair) > 1]
    assert not repeated, f"compiled more than once: {repeated}"
    kernels = [name.removeprefix("fastlstm.kernels.") for name, _ in ours]
    # The child compiled forward_sequence, the one-call forward (experiment 11's layers) and the
    # inference kernels, infer and cpu_team.lead with forward_slice (the experiments' evaluate
    # takes each at some shapes); this process loaded them from the cache, and compiled the
    # one-call backward while the child ran.
    assert {"cpu_training.train_epoch", "cpu_lstm.backward_sequence", "cpu_lstm.backward"} <= set(kernels)
    # One specialisation of the training pass for both models, the last output's and every step's.
    assert kernels.count("cpu_training.train_epoch") == 1
    assert not {"cpu_lstm.forward_sequence", "cpu_lstm.forward", "cpu_lstm.infer", "cpu_team.lead",
                "cpu_team.open_job", "cpu_stepwise.forward_slice"} & set(kernels)
    # A slice assignment of an array compiles Numba's shape-mismatch message, seconds of compiling.
    assert not [name for name, _ in compiles if "raise_with_shape_context" in name]
