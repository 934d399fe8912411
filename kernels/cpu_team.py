"""The threads that share the slices of a stepwise forward pass with the calling thread, in
compiled code from start to end: :func:`open_job` and :func:`lead` for the calling thread,
:func:`serve` for the team's threads; their Python side is ``fastlstm.backends.team``.

A thread of a Python pool needs the interpreter's lock to start its slice and again to report it,
and each time the lock passes to a sleeping thread the operating system must wake that thread: on
a virtual machine 20 to 70 us, against about 0.35 ms of work per slice at 128, 25, 16, 32. Here
the calling thread writes a job into ``control``, an int64 array, opens it and rings a doorbell
(a pipe) if a team thread sleeps; a team thread sleeps on the doorbell inside :func:`serve`,
takes parts of the job, reports each in ``control`` and sleeps again, never leaving compiled
code. It never spins between jobs: a thread that spins has used its share of the CPU when the
work comes, and beside another framework's spinning threads the scheduler then ran its part late,
where a thread woken from sleep runs at once.

``control`` holds a header (the names below are its offsets) and a row of PART_FIELDS per part.
The arrays are given by address, each C-contiguous: ``x`` [batch, time, input_dim] in processing
order, ``h0`` and ``c0`` [batch, units], ``sequences`` [batch, time, units] (unused without
SEQUENCES), the packed weights, the bias, and each part's own ``inputs``, ``gates``, ``c`` and
``act_c`` in the shapes ``cpu_stepwise.forward_slice`` documents. TICKET holds the job's number
above INDEX_BITS and the next part to take below: a thread takes a part by raising it by one
(compare-and-swap), so each part is taken once, and a thread that read an earlier job's ticket
takes none. SLEEPING counts the team threads that sleep, or are about to: the caller then rings.
"""
import os
import platform
import sys

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .cpu_arithmetic import FLAGS
from .cpu_stepwise import forward_slice

(TICKET, SLEEPING, FINISHED, FAILED, PARTS, ITEMSIZE, CALLER_CPU, TIME, INPUT_DIM, UNITS, STEPS, KEPT_STEPS, SEQUENCES,
 ACTIVATION, RECURRENT_ACTIVATION, X, H0, C0, SEQUENCES_AT, PACKED, PANELS, PANEL_ROWS, PANEL_COLUMNS, BIAS,
 BIAS_LENGTH, HEADER) = range(26)
START, SAMPLES, INPUTS, GATES, C, ACT_C, PART_FIELDS = range(7)
INDEX_BITS = 16
CLOSED = (1 << INDEX_BITS) - 1  # the part index of a job being written: above any number of parts

# What serve tells a team thread when it returns: a job in the other float type, to run in its
# own specialisation.
OTHER_DTYPE = 1

# The calling thread, waiting for the team's last parts, yields its CPU once every so many looks
# (about 7 us of x86 pauses): often enough for a thread that needs that CPU, not at every look.
RELAX_EVERY = 256

# A team thread sleeps on its doorbell for at most this long, then looks at the job again.
SLEEP_MS = 1000

# Whether threads can sleep in compiled code here (poll and read of POSIX); where not, numba_cpu
# shares the slices through its pool of Python threads.
AVAILABLE = os.name == "posix"

CPU_SET_WORDS = 16  # a cpu_set_t of Linux, 1024 bits, as int64 words

if AVAILABLE:
    _poll = types.ExternalFunction("poll", types.int32(types.voidptr, types.uint64, types.int32))
    _read = types.ExternalFunction("read", types.int64(types.int32, types.voidptr, types.uint64))
if sys.platform.startswith("linux"):
    _relax = types.ExternalFunction("sched_yield", types.int32())  # lets a thread waiting for this CPU run
    _current_cpu = types.ExternalFunction("sched_getcpu", types.int32())
    _get_affinity = types.ExternalFunction("sched_getaffinity", types.int32(types.int32, types.uint64, types.voidptr))
    _set_affinity = types.ExternalFunction("sched_setaffinity", types.int32(types.int32, types.uint64, types.voidptr))
else:
    @njit(**FLAGS)
    def _relax():
        return 0

    @njit(**FLAGS)
    def _current_cpu():
        return -1  # not known

    @njit(**FLAGS)
    def _get_affinity(pid, size, cpus):
        return -1  # threads are not moved

    _set_affinity = _get_affinity


def _element(context, builder, signature, args):
    """The address of ``args[0][args[1]]``, an element of a 1-D int64 array."""
    array = context.make_array(signature.args[0])(context, builder, args[0])
    return builder.gep(array.data, [args[1]])


@intrinsic
def _load(typingctx, array, index):
    """array[index], in one order with every _load and _store of every thread."""
    def codegen(context, builder, signature, args):
        return builder.load_atomic(_element(context, builder, signature, args), "seq_cst", 8)

    return types.int64(array, index), codegen


@intrinsic
def _store(typingctx, array, index, value):
    """array[index] = value, in one order with every _load and _store of every thread (so that of
    a caller opening a job and a thread going to sleep, at least one sees the other's write)."""
    def codegen(context, builder, signature, args):
        builder.store_atomic(args[2], _element(context, builder, signature, args), "seq_cst", 8)
        return context.get_dummy_value()

    return types.void(array, index, value), codegen


@intrinsic
def _compare_and_swap(typingctx, array, index, expected, value):
    """Sets array[index] to value if it holds expected, at once for every thread; whether it did."""
    def codegen(context, builder, signature, args):
        pair = builder.cmpxchg(_element(context, builder, signature, args), args[2], args[3], "seq_cst", "seq_cst")
        return builder.extract_value(pair, 1)

    return types.boolean(array, index, expected, value), codegen


@intrinsic
def _add(typingctx, array, index, value):
    """array[index] += value, at once for every thread."""
    def codegen(context, builder, signature, args):
        builder.atomic_rmw("add", _element(context, builder, signature, args), args[2], "seq_cst")
        return context.get_dummy_value()

    return types.void(array, index, value), codegen


@intrinsic
def _pause(typingctx):
    """A spin-wait hint: x86's pause, which also spares the core's power; nothing elsewhere."""
    def codegen(context, builder, signature, args):
        if platform.machine().lower() in ("x86_64", "amd64"):
            pause = builder.module.declare_intrinsic("llvm.x86.sse2.pause", fnty=ir.FunctionType(ir.VoidType(), []))
            builder.call(pause, [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _address(typingctx, array):
    """The address of an array's first element, for a C function."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.bitcast(data, ir.IntType(8).as_pointer())

    return types.voidptr(array), codegen


@intrinsic
def _pointer(typingctx, address, like):
    """The integer address as a pointer to like's elements, for numba.carray."""
    if not (isinstance(address, types.Integer) and isinstance(like, types.Array)):
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return types.CPointer(like.dtype)(address, like), codegen


# The helpers between lead (or serve) and forward_slice are inlined in Numba's IR: Numba links a
# compiled callee into each caller and optimises it there again, so each helper compiled on its own
# took another pass over forward_slice (the first run's compile, kernels/README.md).
@njit(inline="always")
def _array(control, at, offset, shape, like):
    """The C-contiguous array of like's type whose first element is offset elements past the
    address control[at]."""
    return numba.carray(_pointer(control[at] + offset * like.itemsize, like), shape)


@njit(inline="always")
def _run_part(control, part, like):
    """forward_slice over the samples of one part."""
    row = HEADER + PART_FIELDS * part
    start, n = control[row + START], control[row + SAMPLES]
    time, input_dim, units, steps = control[TIME], control[INPUT_DIM], control[UNITS], control[STEPS]
    packed_shape = (control[PANELS], control[PANEL_ROWS], control[PANEL_COLUMNS])
    forward_slice(_array(control, X, start * time * input_dim, (n, time, input_dim), like),
                  _array(control, H0, start * units, (n, units), like),
                  _array(control, C0, start * units, (n, units), like),
                  _array(control, row + INPUTS, 0, (steps + 1, n, input_dim + units), like),
                  _array(control, PACKED, 0, packed_shape, like),
                  _array(control, BIAS, 0, (control[BIAS_LENGTH],), like),
                  _array(control, row + GATES, 0, (steps, n, 4 * units), like),
                  _array(control, row + C, 0, (steps + 1, n, units), like),
                  _array(control, row + ACT_C, 0, (control[KEPT_STEPS], n, units), like),
                  _array(control, SEQUENCES_AT, start * time * units, (n * control[SEQUENCES], time, units), like),
                  control[ACTIVATION], control[RECURRENT_ACTIVATION])


@njit(inline="always")
def _take_parts(control, like):
    """Runs parts of the open job until none is left to take."""
    while True:
        ticket = _load(control, TICKET)
        if ticket & CLOSED >= control[PARTS]:
            return
        if _compare_and_swap(control, TICKET, ticket, ticket + 1):
            # The caller rewrites the job only once every part taken is finished: this one's is whole.
            try:
                _run_part(control, ticket & CLOSED, like)
            except Exception:  # compiled code keeps no exception object: the caller raises one
                _store(control, FAILED, 1)
            _add(control, FINISHED, 1)


@njit(**FLAGS)
def open_job(control):
    """Opens the job written in control (closed) to every thread; whether a team thread sleeps,
    or is about to, and must be rung for it."""
    control[CALLER_CPU] = _current_cpu()
    _store(control, TICKET, control[TICKET] & ~CLOSED)
    return _load(control, SLEEPING)


@njit(**FLAGS)
def lead(control, like):
    """The calling thread's part of the open job: takes parts until none is left, waits for the
    parts other threads took; returns FAILED's value."""
    _take_parts(control, like)
    looks = 0
    while _load(control, FINISHED) < control[PARTS]:
        looks += 1
        if looks % RELAX_EVERY:
            _pause()
        else:
            _relax()
    return _load(control, FAILED)


@njit(**FLAGS)
def current_cpu():
    """The CPU the calling thread runs on (Linux), or -1 where that is not known."""
    return _current_cpu()


@njit(**FLAGS)
def leave(cpu, cpus):
    """Moves the calling thread to another CPU it may run on, if it runs on ``cpu`` (Linux; cpus:
    an int64 array of CPU_SET_WORDS to work in). Linux wakes a thread on the CPU of the thread
    that rang for it, where the two would take turns while another core idles, often for
    milliseconds; limiting the thread's CPUs moves it at once, and the limit is lifted right
    after. Whether it moved."""
    if cpu < 0 or cpu != _current_cpu() or cpu >= 64 * CPU_SET_WORDS \
            or _get_affinity(0, 8 * CPU_SET_WORDS, _address(cpus)) != 0:
        return False
    word, bit = cpu // 64, np.int64(1) << (cpu % 64)
    allowed = cpus[word]
    cpus[word] = allowed & ~bit
    others = False
    for w in range(CPU_SET_WORDS):
        others |= cpus[w] != 0
    moved = others and _set_affinity(0, 8 * CPU_SET_WORDS, _address(cpus)) == 0
    if moved:
        cpus[word] = allowed
        _set_affinity(0, 8 * CPU_SET_WORDS, _address(cpus))
    return moved


@njit(**FLAGS)
def serve(control, like, doorbell):
    """A team thread's loop: takes parts of every job opened, sleeping on the doorbell (a pipe's
    file descriptor to read) between them, and first moving off the caller's CPU if it woke on
    it. Returns OTHER_DTYPE for a job in another float type than like's."""
    watch = np.zeros(2, np.int32)  # a struct pollfd: fd, then events and revents as two shorts
    rung = np.zeros(64, np.uint8)
    cpus = np.zeros(CPU_SET_WORDS, np.int64)
    while True:
        if _load(control, TICKET) & CLOSED < control[PARTS]:
            if control[ITEMSIZE] != like.itemsize:
                return OTHER_DTYPE
            leave(control[CALLER_CPU], cpus)
            _take_parts(control, like)
        _add(control, SLEEPING, 1)
        if _load(control, TICKET) & CLOSED >= control[PARTS]:  # no job opened since the look above
            watch[0], watch[1] = doorbell, 1  # POLLIN
            if _poll(_address(watch), 1, SLEEP_MS) > 0:
                _read(doorbell, _address(rung), rung.size)  # every ring so far: the pipe never fills
        _add(control, SLEEPING, -1)
