"""fastlstm: fused LSTM forward and backward (BPTT) kernels with Keras 3's conventions.

``import fastlstm`` needs NumPy alone; the GPU and JIT backends import their libraries on
first use.
"""
from fastlstm.backends import BackendUnavailable, available_backends
from fastlstm.ops import LSTMGradients, LSTMResult, lstm_backward, lstm_forward

__version__ = "0.1.0"
__all__ = [
    "BackendUnavailable",
    "LSTMGradients",
    "LSTMResult",
    "available_backends",
    "lstm_backward",
    "lstm_forward",
]
