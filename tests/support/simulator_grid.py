"""Numba's CUDA simulator, taught cooperative launches: :class:`CooperativeLauncher` runs a launch
whose plan marks it cooperative with every block of its grid at once, each block's threads on
Python threads of their own and each block with shared memory of its own, so that the blocks meet
at the kernels' grid barrier and exchange their rows through global memory as on a GPU. The
simulator itself runs one block after another, which a grid barrier would wait on for ever.
Other launches go to the simulator as they are. Built from the simulator's own pieces (its block
manager, its fake ``cuda`` module and arrays); used by tests/simulator/ under
``NUMBA_ENABLE_CUDASIM=1``.
"""
import threading
import time

import numpy as np
from numba.cuda.simulator import kernel as simulator
from numba.cuda.simulator.kernelapi import FakeCUDAModule, FakeCUDAShared

from fastlstm.backends.numba_cuda import NumbaLauncher


class _BlockSharedModule(FakeCUDAModule):
    """The simulator's ``cuda`` module, whose shared memory is that of the calling thread's block."""

    @property
    def shared(self):
        return threading.current_thread()._manager.shared


class CooperativeLauncher(NumbaLauncher):
    """NumbaLauncher under the simulator, running cooperative launches with every block at once;
    the kernel of each such launch is recorded in ``cooperative_launches``."""

    def __init__(self):
        super().__init__()
        self.cooperative_launches = []

    def __call__(self, launch, *arguments):
        if not launch.cooperative:
            return super().__call__(launch, *arguments)
        self.cooperative_launches.append(launch.kernel)
        run_grid_at_once(self.kernel(launch), launch.grid, launch.block, launch.shared_memory, arguments)


def run_grid_at_once(kernel, grid, block, shared_memory, arguments):
    """Runs the simulated ``kernel`` over ``grid`` x ``block`` with ``shared_memory`` bytes of
    dynamic shared memory a block, every block at once. Should a block fail, the others' threads
    are aborted (the simulator's flag, which a block waiting at the grid barrier reads too) and
    the first failure is raised here."""
    grid_dim, block_dim = simulator.normalize_kernel_dimensions(grid, block)
    module = _BlockSharedModule(grid_dim, block_dim, shared_memory)
    # NumPy arrays as the simulator passes them to a kernel: views of the same memory.
    fake = [simulator.FakeWithinKernelCUDAArray(simulator.FakeCUDAArray(a))
            if isinstance(a, np.ndarray) and a.ndim > 0 else a for a in arguments]
    managers, failures = [], []

    def run_block(grid_point):
        manager = simulator.BlockManager(kernel.fn, grid_dim, block_dim, False)
        manager.shared = FakeCUDAShared(shared_memory)
        managers.append(manager)
        try:
            manager.run(grid_point, *fake)
        except Exception as e:  # noqa: BLE001 - raised in the launching thread
            failures.append(e)

    with simulator._push_kernel_context(module), simulator.swapped_cuda_module(kernel.fn, module):
        blocks = [threading.Thread(target=run_block, args=(point,), daemon=True) for point in np.ndindex(*grid_dim)]
        for thread in blocks:
            thread.start()
        while any(thread.is_alive() for thread in blocks):
            if failures:
                for thread in threading.enumerate():
                    if getattr(thread, "_manager", None) in managers:
                        thread.abort = True
                        thread.syncthreads_blocked = False
                        thread.syncthreads_event.set()
            time.sleep(0.01)
    if failures:
        raise failures[0]
