"""Forward, and forward+backward, of one LSTM layer: every implementation of
bench/implementations.py over the grid of bench/conftest.py, each checked against the NumPy
reference. Group by ``group`` (pass, shape, dtype) to compare implementations side by side."""


def test_forward(timed, implementation, shape, dtype):
    timed("forward", implementation, shape, dtype)


def test_forward_backward(timed, implementation, shape, dtype):
    timed("forward_backward", implementation, shape, dtype)
