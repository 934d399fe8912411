"""Helpers shared by the LSTM tests: random inputs, an independent loop reference, a probe loss, and
the one measure of closeness every comparison uses."""
import math
import multiprocessing
import os
import subprocess
import sys
import tempfile

import numpy as np

from fastlstm import available_backends, lstm_backward, lstm_forward

ARGUMENTS = ("x", "kernel", "recurrent_kernel", "bias", "h0", "c0")
# The CPU backends that work here (numba_cpu where numba is installed, as the test extra does):
# the reference and parity tests run on each.
CPU_BACKENDS = [s.name for s in available_backends() if s.available and s.name in ("numba_cpu", "numpy")]


def relative_error(result, reference):
    """max|result - reference| / max(1, max|reference|): an absolute error for small values, a
    relative one for large, so one tolerance fits outputs and gradients of any scale."""
    result, reference = np.asarray(result), np.asarray(reference)
    return float(np.abs(result - reference).max() / max(1.0, np.abs(reference).max()))


def random_inputs(rng, batch, time, input_dim, units, dtype=np.float64, bias=True, state=True, scale=0.5):
    """A dict of LSTM inputs keyed by ARGUMENTS; bias/h0/c0 are None when not asked for."""
    def draw(*shape):
        return (scale * rng.standard_normal(shape)).astype(dtype)

    return {
        "x": draw(batch, time, input_dim),
        "kernel": draw(input_dim, 4 * units),
        "recurrent_kernel": draw(units, 4 * units),
        "bias": draw(4 * units) if bias else None,
        "h0": draw(batch, units) if state else None,
        "c0": draw(batch, units) if state else None,
    }


# Written independently of fastlstm.activations, element by element with the math module.
_SCALAR_ACTIVATIONS = {
    "tanh": math.tanh,
    "sigmoid": lambda z: 1 / (1 + math.exp(-z)),
    "hard_sigmoid": lambda z: min(max(z / 6 + 0.5, 0.0), 1.0),
    "hard_sigmoid_keras2": lambda z: min(max(0.2 * z + 0.5, 0.0), 1.0),
    "relu": lambda z: max(z, 0.0),
    "softsign": lambda z: z / (1 + abs(z)),
    "linear": lambda z: z,
}


def loop_reference(inputs, activation="tanh", recurrent_activation="sigmoid",
                   return_sequences=False, go_backwards=False):
    """The LSTM as a plain loop over samples, steps and units, in float64.

    Returns (outputs, h, c) shaped as lstm_forward returns them.
    """
    act, rec = _SCALAR_ACTIVATIONS[activation], _SCALAR_ACTIVATIONS[recurrent_activation]
    x = inputs["x"].astype(np.float64)
    kernel = inputs["kernel"].astype(np.float64)
    recurrent = inputs["recurrent_kernel"].astype(np.float64)
    batch, time, _ = x.shape
    units = recurrent.shape[0]
    bias = np.zeros(4 * units) if inputs["bias"] is None else inputs["bias"].astype(np.float64)
    steps = range(time - 1, -1, -1) if go_backwards else range(time)
    outputs = np.zeros((batch, time, units))
    h_final, c_final = np.zeros((batch, units)), np.zeros((batch, units))
    for b in range(batch):
        h = [0.0] * units if inputs["h0"] is None else list(inputs["h0"][b].astype(np.float64))
        c = [0.0] * units if inputs["c0"] is None else list(inputs["c0"][b].astype(np.float64))
        for k, t in enumerate(steps):
            z = [bias[j] + x[b, t] @ kernel[:, j] + sum(h[u] * recurrent[u, j] for u in range(units))
                 for j in range(4 * units)]
            new_h, new_c = [], []
            for u in range(units):
                i, f = rec(z[u]), rec(z[units + u])
                g, o = act(z[2 * units + u]), rec(z[3 * units + u])
                new_c.append(f * c[u] + i * g)
                new_h.append(o * act(new_c[u]))
            h, c = new_h, new_c
            outputs[b, k] = h
        h_final[b], c_final[b] = h, c
    return (outputs if return_sequences else outputs[:, -1]), h_final, c_final


class ProbeLoss:
    """L = sum(wy * outputs) + sum(wh * h) + sum(wc * c) with fixed random weights, so that
    dL/doutputs = wy, dL/dh = wh, dL/dc = wc feed lstm_backward directly."""

    def __init__(self, rng, inputs, options):
        batch, time, _ = inputs["x"].shape
        units = inputs["recurrent_kernel"].shape[0]
        out_shape = (batch, time, units) if options.get("return_sequences") else (batch, units)
        dtype = inputs["x"].dtype
        self.wy = rng.standard_normal(out_shape).astype(dtype)
        self.wh = rng.standard_normal((batch, units)).astype(dtype)
        self.wc = rng.standard_normal((batch, units)).astype(dtype)
        self.options = options

    def value(self, inputs):
        r = lstm_forward(**inputs, **self.options)
        return float(np.sum(self.wy * r.outputs) + np.sum(self.wh * r.h) + np.sum(self.wc * r.c))

    def gradients(self, inputs):
        r = lstm_forward(**inputs, **self.options)
        return lstm_backward(r.cache, self.wy, self.wh, self.wc)


def run_python(code, env=None):
    """The stdout of ``python -c code``, run from a neutral directory so that it imports the
    installed fastlstm, not the checkout's; ``env``: variables to set beside this process's."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=tempfile.gettempdir(), env={**os.environ, **(env or {})}).stdout


def in_forked_child(function, timeout=120):
    """``function()`` run in a child forked from this process (multiprocessing's fork start
    method, Linux's default); returns what it returned. Fails if the child raised, or if it has
    not finished within ``timeout`` seconds: then it is killed, so that a hang fails the test."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=lambda: sender.send(function()), daemon=True)
    child.start()
    sender.close()  # the child's end is now the only one: the pipe closes when the child ends
    if not receiver.poll(timeout):
        child.kill()
        child.join()
        raise AssertionError(f"the forked child did not finish within {timeout} s")
    try:
        return receiver.recv()
    except EOFError:
        raise AssertionError("the forked child failed (its traceback is above)") from None
    finally:
        child.join()
