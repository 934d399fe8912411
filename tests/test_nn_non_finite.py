"""NaN and inf in fastlstm.nn: a fit whose loss turns NaN warns, set_weights refuses non-finite
weights (changing none), and values that overflow the model's float32 are called what they are."""
import warnings

import numpy as np
import pytest

from fastlstm.backends import get_backend
from fastlstm.nn import LSTM, Adam, Dense, Sequential, set_random_seed
from support.lstm_testing import CPU_BACKENDS  # tests/ is on the path
from test_nn import alphabet, model_for


def diverged_warnings(caught):
    return [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning) and "diverged" in str(w.message)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fit_warns_once_when_the_loss_turns_nan(backend):
    """Adam(epsilon=0) divides 0 by 0 where a gradient is 0: the loss is NaN from the first
    epoch. numba_cpu trains this model with its fused pass, numpy a layer at a time."""
    x, y = alphabet()
    set_random_seed(0)
    model = Sequential([LSTM(8, input_shape=(1, 1), backend=backend), Dense(26, activation="softmax")])
    model.compile(optimizer=Adam(epsilon=0), metrics=["accuracy"])
    assert model._fusable() and ("train_epoch" in get_backend(backend).CAPABILITIES) == (backend == "numba_cpu")
    for _ in range(2):  # once per fit call
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = model.fit(x, y, epochs=3, batch_size=1, verbose=0)
        assert np.isnan(history.history["loss"]).all()
        messages = diverged_warnings(caught)
        assert len(messages) == 1
        assert "loss is nan in epoch 1/3" in messages[0] and "epsilon=0" in messages[0]


def test_fit_does_not_warn_while_the_loss_is_finite():
    x, y = alphabet()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model_for().fit(x, y, epochs=2, verbose=0)
    assert diverged_warnings(caught) == []


@pytest.mark.parametrize("bad, message", [
    (np.nan, r"weights\[4\] \(dense\w*\.bias\) contains 1 NaN and 0 inf values"),
    (np.inf, r"weights\[4\] \(dense\w*\.bias\) contains 0 NaN and 1 inf values"),
    (1e300, r"weights\[4\] \(dense\w*\.bias\) has values of magnitude up to 1e\+300, beyond float32's range"),
    ("abc", r"weights\[4\] \(dense\w*\.bias\) must be a numeric array"),
])
def test_set_weights_refuses_non_finite_weights_and_changes_none(bad, message):
    model = model_for()
    before = model.get_weights()
    weights = [w + 1 for w in before]  # every array new, so a partial assignment would show
    weights[4] = np.where(np.arange(26) == 3, bad, weights[4].astype(object))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no NumPy warning about the cast before the error
        with pytest.raises((ValueError, TypeError), match=message):
            model.set_weights(weights)
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_set_weights_checks_every_shape_before_it_assigns_any():
    model = model_for()
    before = model.get_weights()
    weights = [w + 1 for w in before]
    weights[4] = weights[4][:3]
    with pytest.raises(ValueError, match=r"weights\[4\] \(dense\w*\.bias\) must have shape \(26,\), got \(3,\)"):
        model.set_weights(weights)
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_values_beyond_float32_are_refused_as_such():
    x, y = alphabet()
    model = model_for()
    huge_x, huge_y = x.astype(np.float64), y.astype(np.float64)
    huge_x[3, 0, 0], huge_y[5, 0] = 1e300, -2e39
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no NumPy warning about the cast before the error
        with pytest.raises(ValueError, match=r"^x has values of magnitude up to 1e\+300, beyond float32's range "
                                             r"\(3.4e\+38\): the model's dtype is float32"):
            model.predict(huge_x)
        with pytest.raises(ValueError, match=r"^y has values of magnitude up to 2e\+39, beyond float32's range"):
            model.fit(x, huge_y, verbose=0)
    assert np.isfinite(model_for(dtype="float64").predict(huge_x)).all()  # within float64's range
    with pytest.raises(ValueError, match=r"^x contains 0 NaN and 1 inf values"):
        model.predict(np.where(huge_x == 1e300, np.inf, huge_x))
