"""Activation functions of the LSTM, in NumPy, each with its derivative written in terms of
its own output.

Every activation here has a derivative that is a function of the activation's output
(``tanh' = 1 - y**2``, ``sigmoid' = y * (1 - y)``, ...). The forward pass therefore saves only
activated values, and the backward pass never recomputes an activation: the same contract the
fused GPU kernels follow.
"""
from typing import Callable, NamedTuple

import numpy as np


class Activation(NamedTuple):
    name: str
    fn: Callable[[np.ndarray], np.ndarray]
    grad_from_output: Callable[[np.ndarray], np.ndarray]


def _sigmoid(z):
    # exp of a non-positive number only, so +-1e4 neither overflows nor warns.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1, e) / (1 + e)


def _hard_sigmoid_grad(slope):
    return lambda y: slope * ((y > 0) & (y < 1)).astype(y.dtype)


ACTIVATIONS = {
    a.name: a
    for a in (
        Activation("tanh", np.tanh, lambda y: 1 - y * y),
        Activation("sigmoid", _sigmoid, lambda y: y * (1 - y)),
        # Keras 3: relu6(x + 3) / 6, written the same way so float32 results round alike.
        Activation("hard_sigmoid", lambda z: np.clip(z + 3, 0, 6) / 6, _hard_sigmoid_grad(1 / 6)),
        # Keras 2 (the tutorial's 2017 default): clip(0.2 x + 0.5, 0, 1).
        Activation("hard_sigmoid_keras2", lambda z: np.clip(0.2 * z + 0.5, 0, 1), _hard_sigmoid_grad(0.2)),
        Activation("relu", lambda z: np.maximum(z, 0), lambda y: (y > 0).astype(y.dtype)),
        Activation("softsign", lambda z: z / (1 + np.abs(z)), lambda y: (1 - np.abs(y)) ** 2),
        Activation("linear", lambda z: z, np.ones_like),
    )
}


def activation_name(value, argument):
    """The canonical name of an activation given as a Keras-style name (``None`` is linear)."""
    name = "linear" if value is None else value
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(
            f"{argument} must be one of {sorted(ACTIVATIONS)} (or None for linear), got {value!r}"
        )
    return name
