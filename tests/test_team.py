"""The team that runs numba_cpu's stepwise forward slices beside the calling thread
(fastlstm/backends/team.py, kernels/cpu_team.py): every part run once, as forward_slice runs it
alone; a job still being written left alone; a job in another float type, or one whose caller
shares the thread's CPU, handed back to Python; a failing part raised, never waited for; sleeping
threads woken by the doorbell; the pool where threads cannot sleep in compiled code."""
import os
import threading
import time

import numpy as np
import pytest

from fastlstm import lstm_forward
from fastlstm.backends import numba_cpu, team
from fastlstm.kernels import cpu_matmul, cpu_stepwise, cpu_team
from fastlstm.kernels.activation_ids import ACTIVATION_IDS
from support.lstm_testing import random_inputs

pytestmark = pytest.mark.skipif(not cpu_team.AVAILABLE, reason="the team's threads sleep through POSIX's poll")

CODES = (ACTIVATION_IDS["tanh"], ACTIVATION_IDS["sigmoid"])


def _forward(batch=40, time=6, input_dim=3, units=8, parts=4, dtype=np.float32, keep=True, sequences=True):
    """A stepwise forward job's arrays and its job (team._job); the shares' arrays filled with
    NaN, so that a part not run shows."""
    rng = np.random.default_rng([batch, time, units])
    x, h0, c0 = (rng.standard_normal(shape).astype(dtype) for shape in
                 [(batch, time, input_dim), (batch, units), (batch, units)])
    packed = cpu_matmul.pack_columns(rng.standard_normal((input_dim + units, 4 * units)).astype(dtype))
    bias = rng.standard_normal(4 * units).astype(dtype)
    steps = time if keep else 1
    bounds = np.linspace(0, batch, parts + 1).astype(int)
    shares = [numba_cpu.Share(slice(a, b), *(np.full(shape, np.nan, dtype) for shape in [
        (steps + 1, b - a, input_dim + units), (steps, b - a, 4 * units), (steps + 1, b - a, units),
        (time if keep else 0, b - a, units)])) for a, b in zip(bounds, bounds[1:])]
    outputs = np.full((batch, time, units), np.nan, dtype) if sequences else None
    arrays = (x, h0, c0, packed, bias, outputs, CODES, shares)
    return arrays, team._job(*arrays)


def _assert_as_forward_slice_alone(arrays):
    """Each share's arrays, and its samples' outputs, as forward_slice called on it here writes them."""
    x, h0, c0, packed, bias, outputs, codes, shares = arrays
    for share in shares:
        expected = [np.full_like(a, np.nan) for a in share[1:]]
        part = np.full((share.samples.stop - share.samples.start, x.shape[1], h0.shape[1]), np.nan, x.dtype)
        cpu_stepwise.forward_slice(x[share.samples], h0[share.samples], c0[share.samples], expected[0], packed, bias,
                                   *expected[1:], part if outputs is not None else part[:0], *codes)
        for ours, theirs in zip(share[1:], expected):
            np.testing.assert_array_equal(ours, theirs)
        if outputs is not None:
            np.testing.assert_array_equal(outputs[share.samples], part)


def _finished(control, parts, within=30):
    """Whether the team's threads finish the job's parts within ``within`` seconds."""
    deadline = time.monotonic() + within
    while control[cpu_team.FINISHED] < parts and time.monotonic() < deadline:
        time.sleep(0.001)
    return control[cpu_team.FINISHED] == parts


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("keep, sequences", [(True, True), (False, False), (False, True)])
def test_sleeping_team_threads_rung_for_a_job_run_every_part_as_forward_slice_does(dtype, keep, sequences):
    """Nothing leads the job: only the team's threads, asleep since their last job, can run it."""
    crew = team.team(2)
    arrays, job = _forward(parts=6, dtype=dtype, keep=keep, sequences=sequences)
    deadline = time.monotonic() + 60  # a new team's threads compile their loop first
    while crew.control[cpu_team.SLEEPING] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    with crew._lock:
        assert crew.control[cpu_team.SLEEPING] == 2
        team._write(crew.control, job)
        cpu_team.open_job(crew.control)
        crew.control[cpu_team.CALLER_CPU] = -1  # no caller's CPU to leave
        crew.ring()
        assert _finished(crew.control, 6)
        assert crew.control[cpu_team.TICKET] & cpu_team.CLOSED == 6 and not crew.control[cpu_team.FAILED]
    _assert_as_forward_slice_alone(arrays)


def test_a_job_still_being_written_is_not_taken():
    crew = team.team(2)
    arrays, job = _forward()
    with crew._lock:
        team._write(crew.control, job)  # closed
        crew.ring()
        time.sleep(0.05)
        assert crew.control[cpu_team.FINISHED] == 0 and np.isnan(arrays[7][0].gates).all()
        cpu_team.open_job(crew.control)
        crew.control[cpu_team.CALLER_CPU] = -1
        crew.ring()
        assert _finished(crew.control, 4)
    _assert_as_forward_slice_alone(arrays)


def test_the_leading_thread_alone_runs_every_part_and_a_second_job_after_the_first():
    control = team._control(8)
    for batch in (40, 7):
        arrays, job = _forward(batch=batch, parts=min(4, batch))
        team._lead(control, job)
        _assert_as_forward_slice_alone(arrays)


def _open_alone(job):
    control = team._control(8)
    team._write(control, job)
    cpu_team.open_job(control)
    return control


def test_a_job_of_the_other_float_type_is_handed_back_untaken():
    arrays, job = _forward(dtype=np.float64)
    control = _open_alone(job)
    read, write = os.pipe()
    try:
        assert cpu_team.serve(control, np.empty(0, np.float32), read) == cpu_team.OTHER_DTYPE
    finally:
        os.close(read)
        os.close(write)
    assert control[cpu_team.FINISHED] == 0 and np.isnan(arrays[7][0].gates).all()


def _in_a_thread(function):
    """function() in a thread of its own (which may then change its CPUs); what it returned."""
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(function()))
    thread.start()
    thread.join()
    return outcome[0]


MOVABLE = hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1


@pytest.mark.skipif(not MOVABLE, reason="moving a thread between CPUs needs Linux and two CPUs to move between")
def test_a_thread_on_the_cpu_to_leave_moves_to_another_and_may_run_on_every_cpu_again():
    """Moved: Linux took the thread off its CPU as leave limited its CPUs to the others (where it
    runs once the limit is lifted is the scheduler's choice again). Tried a few times, since the
    scheduler may move the thread itself between the look at its CPU and leave's."""
    allowed = os.sched_getaffinity(0)

    def leave_the_current_cpu():
        cpus = np.empty(cpu_team.CPU_SET_WORDS, np.int64)
        moves = [cpu_team.leave(cpu_team.current_cpu(), cpus) for _ in range(20)]
        return any(moves), os.sched_getaffinity(0)

    assert _in_a_thread(leave_the_current_cpu) == (True, allowed)


@pytest.mark.skipif(not MOVABLE, reason="moving a thread between CPUs needs Linux and two CPUs to move between")
def test_a_thread_not_on_the_cpu_to_leave_or_with_no_other_cpu_stays():
    allowed = sorted(os.sched_getaffinity(0))

    def stays():
        cpus = np.empty(cpu_team.CPU_SET_WORDS, np.int64)
        os.sched_setaffinity(0, {allowed[0]})
        moves = [cpu_team.leave(cpu, cpus) for cpu in (-1, allowed[1], allowed[0])]  # unknown, elsewhere, alone
        return moves, cpu_team.current_cpu(), os.sched_getaffinity(0)

    assert _in_a_thread(stays) == ([False, False, False], allowed[0], {allowed[0]})


@pytest.mark.skipif(not MOVABLE, reason="moving a thread between CPUs needs Linux and two CPUs to move between")
def test_a_team_thread_on_the_callers_cpu_takes_its_parts_and_hands_back_a_job_of_the_other_float_type():
    """It moves off the caller's CPU first (leave, tested above), then runs every part."""
    allowed = sorted(os.sched_getaffinity(0))
    arrays, job = _forward()
    control = _open_alone(job)
    control[cpu_team.CALLER_CPU] = allowed[0]
    read, write = os.pipe()
    os.set_blocking(read, False)
    outcome = []

    def on_the_callers_cpu():
        os.sched_setaffinity(0, {allowed[0]})
        os.sched_setaffinity(0, set(allowed))
        outcome.append(cpu_team.serve(control, job[2], read))

    thread = threading.Thread(target=on_the_callers_cpu)
    thread.start()
    assert _finished(control, 4)
    control[cpu_team.ITEMSIZE] = 8  # a float64 job opened: serve hands it back and returns
    control[cpu_team.TICKET] &= ~cpu_team.CLOSED
    os.write(write, b"\0")
    thread.join()
    os.close(read)
    os.close(write)
    assert outcome == [cpu_team.OTHER_DTYPE]
    _assert_as_forward_slice_alone(arrays)


def test_a_part_that_fails_in_compiled_code_is_raised_once_every_part_has_ended():
    """A packed weight array of the wrong height makes matmul_packed raise inside the part."""
    arrays, job = _forward()
    header = list(job[0])
    header[cpu_team.PANEL_ROWS - cpu_team.FINISHED] += 1
    for runner in (lambda bad: team._lead(team._control(8), bad), team.team(3).run):
        with pytest.raises(RuntimeError, match="failed in compiled code"):
            runner((tuple(header), job[1], job[2]))
    team.team(3).run(job)  # the team still serves
    _assert_as_forward_slice_alone(arrays)


def test_a_call_while_another_thread_has_the_team_runs_its_parts_alone():
    crew = team.team(1)
    arrays, job = _forward()
    with crew._lock:
        team.forward_slices(*arrays, threads=1)
    _assert_as_forward_slice_alone(arrays)


@pytest.mark.parametrize("team_available", [True, False])
def test_threads_making_stepwise_forward_calls_at_once_each_get_their_own_results(team_available, monkeypatch):
    """With the team, or (where threads cannot sleep in compiled code) with the pool."""
    assert numba_cpu.runs_stepwise(128, 16, 32)
    inputs = [random_inputs(np.random.default_rng(seed), 128, 16, 8, 32) for seed in range(4)]
    expected = [lstm_forward(**i, return_sequences=True, backend="numba_cpu") for i in inputs]
    monkeypatch.setattr(cpu_team, "AVAILABLE", team_available)
    monkeypatch.setattr(numba_cpu, "_cores", lambda: 2)
    results = {}

    def calls(k):
        results[k] = [lstm_forward(**inputs[k], return_sequences=True, keep_cache=False, backend="numba_cpu")
                      for _ in range(30)]

    threads = [threading.Thread(target=calls, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k in range(4):
        assert len(results[k]) == 30
        for result in results[k]:
            for ours, theirs in zip(result[:3], expected[k][:3]):
                np.testing.assert_array_equal(ours, theirs)
