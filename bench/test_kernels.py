"""Forward and forward+backward of one LSTM layer, per backend that works here.

Run: pytest bench/ --benchmark-only   (or --benchmark-disable to run each once as a test)
"""
import numpy as np
import pytest

import fastlstm
from fastlstm import lstm_backward, lstm_forward

# (batch, time, input_dim, units): the tutorial's batch-1 steps up to a GEMM-bound layer.
SHAPES = [(1, 1, 1, 50), (1, 25, 1, 32), (32, 25, 1, 32), (256, 25, 64, 128)]
BACKENDS = [s.name for s in fastlstm.available_backends() if s.available]


def _inputs(batch, time, input_dim, units, dtype=np.float32):
    rng = np.random.default_rng(0)
    return dict(
        x=rng.standard_normal((batch, time, input_dim)).astype(dtype),
        kernel=(0.1 * rng.standard_normal((input_dim, 4 * units))).astype(dtype),
        recurrent_kernel=(0.1 * rng.standard_normal((units, 4 * units))).astype(dtype),
        bias=np.zeros(4 * units, dtype),
    )


def _shape_id(shape):
    return "b{}-t{}-d{}-u{}".format(*shape)


def _prepare(benchmark, pass_name, backend, shape):
    benchmark.group = f"{pass_name} {_shape_id(shape)}"
    benchmark.extra_info.update(backend=backend, shape=shape, dtype="float32")
    return _inputs(*shape)


@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward(benchmark, backend, shape):
    inputs = _prepare(benchmark, "forward", backend, shape)
    result = benchmark(lstm_forward, **inputs, backend=backend)
    assert result.h.shape == (shape[0], shape[3]) and np.isfinite(result.h).all()


@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_backward(benchmark, backend, shape):
    inputs = _prepare(benchmark, "forward+backward", backend, shape)

    def step():
        result = lstm_forward(**inputs, backend=backend)
        return lstm_backward(result.cache, dy=np.ones_like(result.outputs))

    grads = benchmark(step)
    assert grads.kernel.shape == inputs["kernel"].shape and np.isfinite(grads.kernel).all()
