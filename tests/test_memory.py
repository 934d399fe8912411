"""fastlstm.backends.memory.Pool: memory comes back only when no array uses it."""
import numpy as np
import pytest

from fastlstm.backends.memory import Pool


def test_an_arrays_memory_is_reused_once_it_is_gone():
    pool = Pool(capacity=1 << 20)
    a = pool.empty((4, 6), np.float32)
    address = a.ctypes.data
    del a
    b = pool.empty((3, 8), np.float32)  # the same bytes in another shape
    assert b.ctypes.data == address and b.shape == (3, 8) and b.dtype == np.float32
    assert b.flags.c_contiguous and b.flags.writeable and b.flags.aligned
    assert pool.held() == 96


def test_memory_a_view_still_uses_is_not_handed_out_again():
    pool = Pool(capacity=1 << 20)
    a = pool.empty((4, 6), np.float64)
    a[...] = np.arange(24).reshape(4, 6)
    view = a[1:, ::2].T  # a view of a view: it keeps a alive, not just the memory
    del a
    b = pool.empty((4, 6), np.float64)
    b[...] = -1
    assert not np.shares_memory(b, view)
    np.testing.assert_array_equal(view, np.arange(24).reshape(4, 6)[1:, ::2].T)
    del view
    c = pool.empty((24,), np.float64)
    assert not np.shares_memory(c, b) and pool.held() == 2 * 192  # the first block, free again


def test_blocks_nobody_uses_make_room_and_what_cannot_fit_gets_its_own_memory():
    pool = Pool(capacity=1000)
    kept = pool.empty((100,), np.float32)  # 400 bytes, in use throughout
    first = pool.empty((50,), np.float32)  # 200 bytes
    second = pool.empty((75,), np.float32)  # 300 bytes
    del first, second
    third = pool.empty((100,), np.float32)  # 400 more: both free blocks, oldest first, are let go
    assert pool.held() == 800
    fourth = pool.empty((50,), np.float32)  # first's size, made anew: it fits
    assert pool.held() == 1000
    big = pool.empty((1000,), np.float32)  # 4000 bytes: more than the capacity
    assert big.shape == (1000,) and big.flags.owndata and pool.held() == 1000
    arrays = [kept, third, fourth, big]
    assert not any(np.shares_memory(x, y) for i, x in enumerate(arrays) for y in arrays[i + 1:])


def test_an_empty_array_needs_no_block_nor_a_search_for_one():
    pool = Pool(capacity=1000)
    pool._new_block = lambda nbytes: pytest.fail(f"a block of {nbytes} bytes was asked for")
    assert pool.empty((0, 3), np.float32).shape == (0, 3) and pool.held() == 0
