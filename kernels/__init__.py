"""Kernel sources, installed as ``fastlstm.kernels``: CUDA C (``*.cu``, loaded by CuPy) and
Numba kernels. Nothing here is compiled or imported when fastlstm is imported."""
