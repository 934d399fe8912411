"""What the tests share: LSTM inputs and reference checks (lstm_testing), the comparisons with
devices (gpu_testing), the g++ emulation harness of the CUDA C kernels (cuda_emulation and
emulation/), NVRTC (nvrtc) and the PTX of the Numba CUDA kernels (numba_ptx, also run as a script)."""
