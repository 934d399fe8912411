"""The threads that run a stepwise forward pass's slices beside the calling thread, in compiled
code (``fastlstm.kernels.cpu_team``): :func:`forward_slices`.
"""
import functools
import os
import threading

import numpy as np

from fastlstm.kernels import cpu_team


class Team:
    """``threads`` threads that take parts of the jobs opened in ``control`` (up to ``parts``
    parts a job) and sleep on a doorbell, a pipe, between them."""

    def __init__(self, threads, parts):
        self.control = _control(parts)
        self._lock = threading.Lock()  # one job at a time
        self._doorbell, self._ring = os.pipe()
        os.set_blocking(self._ring, False)  # a full pipe has rung enough
        os.set_blocking(self._doorbell, False)  # of threads woken by one ring, those that read none go on
        for _ in range(threads):
            threading.Thread(target=self._serve, name="fastlstm-team", daemon=True).start()

    def _serve(self):
        like = np.empty(0, np.float32)  # the float type of the jobs served (one compiled loop each)
        while cpu_team.serve(self.control, like, self._doorbell) == cpu_team.OTHER_DTYPE:
            like = np.empty(0, np.float64 if self.control[cpu_team.ITEMSIZE] == 8 else np.float32)

    def ring(self):
        """Wakes the threads that sleep."""
        try:
            os.write(self._ring, b"\0")
        except BlockingIOError:
            pass

    def run(self, job):
        """Runs ``job`` (what :func:`_job` makes) with the team's threads, or in this thread
        alone while another thread's job has the team."""
        if not self._lock.acquire(blocking=False):
            return _lead(_control(len(job[1])), job)
        try:
            return _lead(self.control, job, self.ring)
        finally:
            self._lock.release()


def _control(parts):
    """A control array for jobs of up to ``parts`` parts, no job open."""
    control = np.zeros(cpu_team.HEADER + cpu_team.PART_FIELDS * parts, np.int64)
    control[cpu_team.TICKET] = cpu_team.CLOSED
    return control


def _lead(control, job, ring=None):
    """Writes the job into control, opens it (ringing, if a team thread sleeps) and takes its parts
    with whichever threads serve control; raises if a part failed."""
    _write(control, job)
    if cpu_team.open_job(control) and ring is not None:
        ring()
    if cpu_team.lead(control, job[2]):
        raise RuntimeError("a slice of the stepwise forward pass failed in compiled code")


def _write(control, job):
    """Writes ``job`` (header, rows, an empty array of its float type) into control, closed: no
    thread takes a part of it until cpu_team.open_job."""
    header, rows, _ = job
    ticket = (int(control[cpu_team.TICKET]) >> cpu_team.INDEX_BITS) + 1 << cpu_team.INDEX_BITS
    control[cpu_team.TICKET] = ticket | cpu_team.CLOSED  # a thread reading the job now takes no part of it
    control[cpu_team.FINISHED:cpu_team.HEADER] = header
    control[cpu_team.HEADER:cpu_team.HEADER + rows.size] = rows.ravel()


@functools.cache
def team(threads):
    """The process's team of ``threads`` threads, made on first use, for jobs of up to two parts
    a core (numba_cpu's _slices)."""
    return Team(threads, 2 * (threads + 1))


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    # A forked child has none of the parent's threads: a job opened to them would wait for them.
    os.register_at_fork(after_in_child=team.cache_clear)


def forward_slices(x, h0, c0, packed, bias, sequences, codes, shares, threads):
    """Runs ``cpu_stepwise.forward_slice`` over every share (numba_cpu's Share: its samples and
    its arrays) on this thread and ``threads`` team threads. x [batch, time, input_dim] in
    processing order, h0, c0 [batch, units], sequences [batch, time, units] or None, packed and
    bias as forward_slice takes them, each C-contiguous; codes: the activations' codes."""
    job = _job(x, h0, c0, packed, bias, sequences, codes, shares)
    if threads:
        team(threads).run(job)
    else:
        _lead(_control(len(shares)), job)


def _job(x, h0, c0, packed, bias, sequences, codes, shares):
    """forward_slices' job as _write writes it: the header from FINISHED on, a row per share, and
    an empty array of x's float type."""
    _, time, input_dim = x.shape
    gates, act_c = shares[0].gates, shares[0].act_c
    header = (0, 0, len(shares), x.itemsize, -1, time, input_dim, h0.shape[1], len(gates), len(act_c),
              sequences is not None, *codes, x.ctypes.data, h0.ctypes.data, c0.ctypes.data,
              (x if sequences is None else sequences).ctypes.data, packed.ctypes.data, *packed.shape,
              bias.ctypes.data, len(bias))
    rows = np.array([(share.samples.start, share.samples.stop - share.samples.start, share.inputs.ctypes.data,
                      share.gates.ctypes.data, share.c.ctypes.data, share.act_c.ctypes.data) for share in shares])
    return header, rows, np.empty(0, x.dtype)
