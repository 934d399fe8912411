"""Forward, and forward+backward, of each CPU implementation timed right after every other one
made the same pass in the same process, their idle threads still spinning on the cores: what a
program that trains with one framework beside another sees (bench/test_kernels.py times each as if
alone). float32, at the grid's shapes of more than one time step, each checked against the NumPy
reference; the report puts them in a table of their own."""
import pytest

pytestmark = pytest.mark.side_by_side


def test_forward(timed, implementation, shape, dtype):
    timed("forward", implementation, shape, dtype, "side by side")


def test_forward_backward(timed, implementation, shape, dtype):
    timed("forward_backward", implementation, shape, dtype, "side by side")
