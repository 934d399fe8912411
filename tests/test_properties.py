"""Property tests over random shapes, options and dtypes (200 examples each in CI)."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from fastlstm import lstm_backward, lstm_forward
from fastlstm.activations import ACTIVATIONS
from lstm_testing import ARGUMENTS, ProbeLoss, loop_reference, random_inputs

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


@given(cases)
def test_forward_agrees_with_a_plain_loop(case):
    _, inputs = _inputs(case)
    result = lstm_forward(**inputs, **case["options"])
    expected = loop_reference(inputs, **case["options"])
    tolerance = 2e-6 if case["dtype"] == np.float32 else 1e-12
    for got, want in zip(result[:3], expected):
        assert got.dtype == case["dtype"] and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)


@given(cases)
def test_backward_agrees_with_a_directional_finite_difference(case):
    """<gradient, v> for a random direction v against (L(p + eps v) - L(p - eps v)) / 2 eps,
    the difference always taken in float64."""
    rng, inputs = _inputs(case)
    loss = ProbeLoss(rng, inputs, case["options"])
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
