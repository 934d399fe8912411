"""Property tests over random shapes, options and dtypes (200 examples each in CI), per CPU backend."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastlstm import lstm_backward, lstm_forward
from fastlstm.activations import ACTIVATIONS
from support.lstm_testing import ARGUMENTS, CPU_BACKENDS, ProbeLoss, loop_reference, random_inputs

cases = st.fixed_dictionaries(
    {
        "shape": st.tuples(*(st.integers(1, n) for n in (4, 6, 4, 5))),
        "dtype": st.sampled_from([np.float32, np.float64]),
        "bias": st.booleans(),
        "state": st.booleans(),
        "seed": st.integers(0, 2**32 - 1),
        "options": st.fixed_dictionaries(
            {
                "activation": st.sampled_from(sorted(ACTIVATIONS)),
                "recurrent_activation": st.sampled_from(sorted(ACTIVATIONS)),
                "return_sequences": st.booleans(),
                "go_backwards": st.booleans(),
            }
        ),
    }
)


def _inputs(case):
    rng = np.random.default_rng(case["seed"])
    inputs = random_inputs(rng, *case["shape"], dtype=case["dtype"], bias=case["bias"], state=case["state"])
    return rng, inputs


def _float32_tolerance(options):
    """2e-6 where both activations saturate (measured worst over 3000 random draws: 1.2e-7 numpy,
    1.4e-7 numba_cpu). With linear or relu the state can grow step after step, and the round-off
    with it, on every backend (linear throughout: 2.7e-4 for numpy and numba_cpu alike over 300
    draws, and overflow on some); there 1e-4 (numba_cpu's worst example here: 1.6e-5)."""
    unbounded = {"linear", "relu"} & {options["activation"], options["recurrent_activation"]}
    return 1e-4 if unbounded else 2e-6


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(cases)
def test_forward_agrees_with_a_plain_loop(backend, case):
    _, inputs = _inputs(case)
    result = lstm_forward(**inputs, **case["options"], backend=backend)
    expected = loop_reference(inputs, **case["options"])
    tolerance = _float32_tolerance(case["options"]) if case["dtype"] == np.float32 else 1e-12
    for got, want in zip(result[:3], expected):
        assert got.dtype == case["dtype"] and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(cases)
def test_backward_agrees_with_a_directional_finite_difference(backend, case):
    """<gradient, v> for a random direction v against (L(p + eps v) - L(p - eps v)) / 2 eps,
    the difference always taken in float64."""
    rng, inputs = _inputs(case)
    loss = ProbeLoss(rng, inputs, {**case["options"], "backend": backend})
    grads = loss.gradients(inputs)
    present = [n for n in ARGUMENTS if inputs[n] is not None]
    direction = {n: rng.standard_normal(inputs[n].shape) for n in present}
    analytic = sum(np.vdot(getattr(grads, n).astype(np.float64), direction[n]) for n in present)

    inputs64 = {n: None if a is None else a.astype(np.float64) for n, a in inputs.items()}
    loss.wy, loss.wh, loss.wc = (w.astype(np.float64) for w in (loss.wy, loss.wh, loss.wc))
    eps = 1e-6

    def moved(sign):
        return {n: a if a is None else a + sign * eps * direction[n] for n, a in inputs64.items()}

    numeric = (loss.value(moved(1)) - loss.value(moved(-1))) / (2 * eps)
    scale = np.sqrt(sum(np.vdot(getattr(grads, n), getattr(grads, n)) for n in present))
    scale *= np.sqrt(sum(np.vdot(v, v) for v in direction.values()))
    tolerance = 1e-4 if case["dtype"] == np.float32 else 1e-7
    assert abs(analytic - numeric) <= tolerance * max(scale, 1.0)
