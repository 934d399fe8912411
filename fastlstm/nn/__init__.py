"""A small Keras-like model API on the fastlstm kernels, with Keras 3's names and semantics.

Layers: :class:`LSTM`, :class:`Dense`, :class:`TimeDistributed` (a layer on every time step of
``[batch, time, features]``) and :class:`RepeatVector` (``[batch, features]`` to ``[batch, n,
features]``), stacked in a :class:`Sequential`, trained with categorical cross-entropy and Adam.

>>> from fastlstm.nn import LSTM, Dense, Sequential, set_random_seed
>>> set_random_seed(7)
>>> model = Sequential([LSTM(32, input_shape=(1, 1)), Dense(26, activation="softmax")])
>>> model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])

Weights come in Keras 3's layout and order, so ``model.set_weights(keras_model.get_weights())``
works both ways for the same architecture. Everything is NumPy; the LSTM runs on
:func:`fastlstm.ops.lstm_forward` / :func:`fastlstm.ops.lstm_backward`, except that training an
LSTM (last output) + softmax Dense model takes the backend's fused pass where it has one
(numba_cpu: forward, loss, backward and Adam for every batch of an epoch in one compiled call).
"""
from fastlstm.nn.layers import LSTM, Dense, Layer, RepeatVector, TimeDistributed
from fastlstm.nn.losses import CategoricalCrossentropy
from fastlstm.nn.model import History, Sequential
from fastlstm.nn.optimizers import Adam
from fastlstm.utils import set_random_seed

__all__ = [
    "Adam",
    "CategoricalCrossentropy",
    "Dense",
    "History",
    "LSTM",
    "Layer",
    "RepeatVector",
    "Sequential",
    "TimeDistributed",
    "set_random_seed",
]
