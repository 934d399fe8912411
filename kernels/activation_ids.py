"""The activation ids that every kernel takes: an activation's id is its index in ACTIVATION_NAMES.

The Numba kernels and the GPU launch plan import them from here; the CUDA C kernels spell the same
ids in lstm_common.cuh's ``enum Activation``, which tests/test_kernel_sources.py compares with these.
"""
ACTIVATION_NAMES = ("tanh", "sigmoid", "hard_sigmoid", "hard_sigmoid_keras2", "relu", "softsign", "linear")
ACTIVATION_IDS = {name: id_ for id_, name in enumerate(ACTIVATION_NAMES)}
TANH, SIGMOID, HARD_SIGMOID, HARD_SIGMOID_KERAS2, RELU, SOFTSIGN, LINEAR = range(len(ACTIVATION_NAMES))
