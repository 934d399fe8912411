"""A child forked from a process that has used fastlstm (multiprocessing's default start method on
Linux) computes on its own: it neither shares the parent's recycled memory nor waits for threads
that exist only in the parent."""
import os

import numpy as np
import pytest

from fastlstm import lstm_backward, lstm_forward
from fastlstm.backends.memory import Pool
from support.lstm_testing import in_forked_child, random_inputs

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")


def test_a_forked_child_writes_its_own_copy_of_a_pool_array():
    pool = Pool(capacity=1 << 20)
    parents = pool.empty((1000,), np.float64)
    parents[...] = 1

    def child():
        parents[...] = 2  # the child's copy of the array
        return float(parents.sum())

    assert in_forked_child(child) == 2000
    assert (parents == 1).all()


def test_a_forked_child_starts_with_an_empty_pool_and_a_free_lock():
    """Another thread of the parent inside the pool at fork would leave its lock held for ever in
    the child; and the blocks the parent holds are the parent's to hand out."""
    pool = Pool(capacity=1 << 20)
    pool.empty((1000,), np.float64)  # dropped at once: a block free at fork
    with pool._lock:  # as a thread of the parent in pool.empty() when another forks
        def child():
            held_at_fork = pool.held()
            array = pool.empty((1000,), np.float64)
            return held_at_fork, pool.held(), array.shape

        assert in_forked_child(child, timeout=30) == (0, 8000, (1000,))
    assert pool.held() == 8000


def test_the_stepwise_path_runs_in_a_child_forked_after_it_ran_in_the_parent():
    """The numba_cpu stepwise path runs on a pool of threads made once per process, which a
    forked child does not have."""
    from fastlstm.backends import numba_cpu

    inputs = random_inputs(np.random.default_rng(0), 64, 16, 8, 32)
    assert numba_cpu.runs_stepwise(64, 16, 32)
    dy = np.ones((64, 32))

    def gradients():
        return lstm_backward(lstm_forward(**inputs, backend="numba_cpu").cache, dy)

    expected = gradients()
    for ours, theirs in zip(in_forked_child(gradients, timeout=60), expected):
        np.testing.assert_array_equal(ours, theirs)

