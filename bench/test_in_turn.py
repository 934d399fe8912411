"""Forward, and forward+backward, of fastlstm's CPU backends and the CPU baselines (Keras, raw
TensorFlow, PyTorch) taken in turn, round by round in one process, each call once the others'
threads rest: each as if alone, as in bench/test_kernels.py, but seconds apart rather than a
minute, so that the machine's drift moves them alike. Each benchmark times one fastlstm backend
and records the baselines' medians of the same rounds (``extra_info["in_turn_with"]``); the report
puts them in a table of their own."""
import pytest

pytestmark = pytest.mark.in_turn


def test_forward(timed, implementation, shape, dtype):
    timed("forward", implementation, shape, dtype, "in turn")


def test_forward_backward(timed, implementation, shape, dtype):
    timed("forward_backward", implementation, shape, dtype, "in turn")
