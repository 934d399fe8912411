"""Memory that outlives a call: the large arrays of one call are made in the memory of an earlier
call's arrays once those are gone.

Why: glibc gives a freed block of megabytes back to the system, and the next call's array of the
same size then takes it back page by page, each page zeroed by the kernel, a cost that the
numba_cpu backend's large shapes show (bench/test_kernels.py at 256, 25, 64, 128).
"""
import contextlib
import math
import mmap
import os
import threading
import weakref

import numpy as np

# Private, not shared (mmap's default): a block free at fork would be handed out in parent and
# child, and both would write the same pages. Windows has no fork, and no MAP_PRIVATE.
PRIVATE = dict(flags=mmap.MAP_PRIVATE) if hasattr(mmap, "MAP_PRIVATE") else {}
_POOLS = weakref.WeakSet()  # every pool, emptied in a forked child


def _empty_every_pool():
    for pool in _POOLS:
        pool._forget_blocks()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_empty_every_pool)


class Pool:
    """Recycles memory for ``empty()``'s arrays, holding at most ``capacity`` bytes in all.

    Each array handed out is made over a block the pool keeps, a private anonymous mmap. NumPy makes
    every view of such an array refer to the array itself (the chain of bases stops where it
    reaches a non-array), so the block is free again exactly when the array and all its views are
    gone. A block is reused only for an array of its exact size. Blocks nobody uses are let go,
    oldest first, to make room for a new one; an array that cannot fit even then gets memory of
    its own, as ``np.empty`` gives it.

    A child process made by ``fork`` starts with an empty pool: its copies of the parent's blocks
    are the child's own (private memory, copied on write), and are not handed out again.
    """

    def __init__(self, capacity):
        self.capacity = capacity
        self._forget_blocks()
        _POOLS.add(self)

    def _forget_blocks(self):
        self._blocks = []  # [block, weak reference to the array using it], oldest first
        self._lock = threading.Lock()  # a new one: in a forked child, another thread may have held the old

    def empty(self, shape, dtype):
        """An uninitialised C-contiguous array of ``shape`` and ``dtype``."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes == 0:  # no memory to recycle (numba_cpu's inference keeps an act_c of no step)
            return np.empty(shape, dtype)
        with self._lock:
            entry = next((e for e in self._blocks if len(e[0]) == nbytes and e[1]() is None), None)
            if entry is None:
                entry = self._new_block(nbytes)
                if entry is None:
                    return np.empty(shape, dtype)
            array = np.ndarray(shape, dtype, buffer=entry[0])
            entry[1] = weakref.ref(array)
            return array

    def held(self):
        """The bytes the pool holds, in use or not."""
        return sum(len(block) for block, _ in self._blocks)

    def _new_block(self, nbytes):
        free = [e for e in self._blocks if e[1]() is None]
        while free and self.held() + nbytes > self.capacity:
            self._blocks.remove(free.pop(0))
        if self.held() + nbytes > self.capacity:
            return None
        block = mmap.mmap(-1, nbytes, **PRIVATE)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            # As NumPy asks for its large arrays: the recurrence reads rows a time step apart, and
            # with 4 KiB pages each row is a TLB miss (bench/test_kernels.py's forward_backward at 256, 25, 64, 128).
            with contextlib.suppress(OSError):  # a kernel without transparent huge pages
                block.madvise(mmap.MADV_HUGEPAGE)
        entry = [block, lambda: None]
        self._blocks.append(entry)
        return entry
