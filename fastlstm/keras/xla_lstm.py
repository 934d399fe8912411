"""The fused LSTM as two compiled XLA FFI targets on the CPU, for JAX (and, through the same call
frame, for TensorFlow's operations of :mod:`.tf_lstm`): Numba cfuncs that read XLA's
call frame and run the numba_cpu backend's one-call kernels (``kernels/cpu_lstm.py``) on XLA's
buffers, with no Python and no interpreter lock in the call.

Why: a Python FFI target (:mod:`.xla_ffi`) holds the interpreter's lock for its whole call, so
the compiled step waits while the caller's Python dispatches the next one, and each call spends
some 60 us making NumPy arrays of its buffers; at the tutorial's batch-1 steps that made a JAX
``fit`` epoch twice as slow as Keras's own layer. These targets take the calls that need nothing
else: no mask, and a shape small enough for the one-call kernels (the larger ones go to the
stepwise path's threads through :mod:`.xla_ffi`).

- the forward ``(x [batch, time, features], kernel, recurrent_kernel, bias [4*units], h0, c0,
  options) -> (outputs, h_T, c_T, h [batch, time + 1, units], c, gates [batch, time, 4*units],
  act_c [batch, time, units])``, the last four what the backward needs;
- the backward ``(x, kernel, recurrent_kernel, h, c, gates, act_c, d_outputs, d_h_T, d_c_T,
  options) -> (dx, dkernel, drecurrent_kernel, dbias, dh0, dc0)``;

where ``options`` is int32 ``[activation id, recurrent activation id, go_backwards,
return_sequences]``, so that one compiled pair serves every layer; a pair per dtype, float32 or
float64 (:func:`target`).
"""
import ctypes
import functools

import numpy as np
from llvmlite import ir
from numba import carray, cfunc, njit, types
from numba.extending import intrinsic

from fastlstm.kernels import cpu_lstm
from fastlstm.keras.xla_ffi import (EXECUTE, METADATA_EXTENSION, _Api, _Buffer, _Buffers, _CallFrame, _Extension,
                                    _Metadata, _MetadataExtension, _Version)


def _offset(struct, *fields):
    """The byte offset of a (nested) field of a ctypes structure."""
    total = 0
    for field in fields:
        total += getattr(struct, field).offset
        struct = dict(struct._fields_)[field]
    return total


FRAME_EXTENSION, FRAME_API, FRAME_STAGE = (_offset(_CallFrame, f) for f in ("extension_start", "api", "stage"))
ARGS, RETS = _offset(_CallFrame, "args"), _offset(_CallFrame, "rets")
ITEMS = _offset(_Buffers, "items")
DATA, DTYPE, RANK, DIMS = (_offset(_Buffer, f) for f in ("data", "dtype", "rank", "dims"))
EXTENSION_TYPE = _offset(_Extension, "type")
METADATA = _offset(_MetadataExtension, "metadata")
API_MAJOR, API_MINOR = _offset(_Api, "api_version", "major"), _offset(_Api, "api_version", "minor")
METADATA_MAJOR, METADATA_MINOR = _offset(_Metadata, "api_version", "major"), _offset(_Metadata, "api_version", "minor")
METADATA_TRAITS = _offset(_Metadata, "traits")
assert ctypes.sizeof(ctypes.c_void_p) == 8 and _Version.major.size == 4


@intrinsic
def _as_pointer(typingctx, address):
    """The integer ``address`` as a void pointer."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())

    return types.voidptr(address), codegen


@intrinsic
def _as_address(typingctx, pointer):
    """The void pointer ``pointer`` as an integer address."""
    if pointer != types.voidptr:
        return None

    def codegen(context, builder, signature, args):
        return builder.ptrtoint(args[0], ir.IntType(64))

    return types.int64(pointer), codegen


@njit(inline="always")
def _load_i64(address):
    return carray(_as_pointer(address), (1,), np.int64)[0]


@njit(inline="always")
def _load_i32(address):
    return carray(_as_pointer(address), (1,), np.int32)[0]


@njit(inline="always")
def _store_i32(address, value):
    carray(_as_pointer(address), (1,), np.int32)[0] = value


@njit(inline="always")
def _answered_metadata(frame):
    """Whether the call only asks for the handler's metadata (answered: the API version XLA
    offers, no traits)."""
    extension = _load_i64(frame + FRAME_EXTENSION)
    if extension == 0 or _load_i32(extension + EXTENSION_TYPE) != METADATA_EXTENSION:
        return False
    metadata, api = _load_i64(extension + METADATA), _load_i64(frame + FRAME_API)
    _store_i32(metadata + METADATA_MAJOR, _load_i32(api + API_MAJOR))
    _store_i32(metadata + METADATA_MINOR, _load_i32(api + API_MINOR))
    _store_i32(metadata + METADATA_TRAITS, 0)
    return True


@njit(inline="always")
def _buffer(frame, which, i):
    """The address of the i-th XLA_FFI_Buffer of the frame's args (which=ARGS) or rets (RETS)."""
    return _load_i64(_load_i64(frame + which + ITEMS) + 8 * i)


@njit
def _flat(frame, which, i, dtype):
    """The i-th buffer as a flat array over XLA's memory (XLA's buffers are dense, row-major)."""
    buffer = _buffer(frame, which, i)
    dims = _load_i64(buffer + DIMS)
    size = 1
    for k in range(_load_i64(buffer + RANK)):
        size *= _load_i64(dims + 8 * k)
    return carray(_as_pointer(_load_i64(buffer + DATA)), (size,), dtype)


@njit(inline="always")
def _dim(frame, which, i, k):
    """Dimension k of the i-th buffer."""
    return _load_i64(_load_i64(_buffer(frame, which, i) + DIMS) + 8 * k)


@njit(inline="always")
def _copy(out, a):
    """out[...] = a, for a C-contiguous ``out`` and any ``a`` of its size."""
    out_flat = out.reshape(out.size)
    for j, value in enumerate(a.flat):
        out_flat[j] = value


@njit(inline="always")
def _in_processing_order(x, go_backwards):
    """x [batch, time, ...], reversed in time for go_backwards (a copy), else as it is."""
    return x[:, ::-1].copy() if go_backwards else x


@njit
def _forward(frame, dtype):
    batch, steps, features = _dim(frame, ARGS, 0, 0), _dim(frame, ARGS, 0, 1), _dim(frame, ARGS, 0, 2)
    units = _dim(frame, ARGS, 2, 0)
    options = _flat(frame, ARGS, 6, np.int32)
    x = _flat(frame, ARGS, 0, dtype).reshape((batch, steps, features))
    kernel = _flat(frame, ARGS, 1, dtype).reshape((features, 4 * units))
    recurrent_kernel = _flat(frame, ARGS, 2, dtype).reshape((units, 4 * units))
    bias = _flat(frame, ARGS, 3, dtype)
    h0 = _flat(frame, ARGS, 4, dtype).reshape((batch, units))
    c0 = _flat(frame, ARGS, 5, dtype).reshape((batch, units))
    h = _flat(frame, RETS, 3, dtype).reshape((batch, steps + 1, units))
    c = _flat(frame, RETS, 4, dtype).reshape((batch, steps + 1, units))
    gates = _flat(frame, RETS, 5, dtype).reshape((batch, steps, 4 * units))
    act_c = _flat(frame, RETS, 6, dtype).reshape((batch, steps, units))
    cpu_lstm.forward(_in_processing_order(x, options[2] != 0), kernel, recurrent_kernel, bias, h0, c0,
                     h, c, gates, act_c, np.int64(options[0]), np.int64(options[1]))
    if options[3]:
        _copy(_flat(frame, RETS, 0, dtype), h[:, 1:])
    else:
        _copy(_flat(frame, RETS, 0, dtype), h[:, steps])
    _copy(_flat(frame, RETS, 1, dtype), h[:, steps])
    _copy(_flat(frame, RETS, 2, dtype), c[:, steps])


@njit
def _backward(frame, dtype):
    batch, steps, features = _dim(frame, ARGS, 0, 0), _dim(frame, ARGS, 0, 1), _dim(frame, ARGS, 0, 2)
    units = _dim(frame, ARGS, 2, 0)
    options = _flat(frame, ARGS, 10, np.int32)
    go_backwards, return_sequences = options[2] != 0, options[3] != 0
    x = _flat(frame, ARGS, 0, dtype).reshape((batch, steps, features))
    kernel = _flat(frame, ARGS, 1, dtype).reshape((features, 4 * units))
    recurrent_kernel = _flat(frame, ARGS, 2, dtype).reshape((units, 4 * units))
    h = _flat(frame, ARGS, 3, dtype).reshape((batch, steps + 1, units))
    c = _flat(frame, ARGS, 4, dtype).reshape((batch, steps + 1, units))
    gates = _flat(frame, ARGS, 5, dtype).reshape((batch, steps, 4 * units))
    act_c = _flat(frame, ARGS, 6, dtype).reshape((batch, steps, units))
    dh = _flat(frame, ARGS, 8, dtype).reshape((batch, units)).copy()
    dc = _flat(frame, ARGS, 9, dtype).reshape((batch, units)).copy()
    d_outputs = _flat(frame, ARGS, 7, dtype)
    if return_sequences:
        dy = d_outputs.reshape((batch, steps, units))
    else:
        dy = np.empty((batch, 0, units), dtype)
        dh += d_outputs.reshape((batch, units))  # the output is h_T
    dx, dkernel, drecurrent_kernel, dbias = cpu_lstm.backward(
        _in_processing_order(x, go_backwards), kernel, recurrent_kernel, bool(True), h, c, gates, act_c, dy, dh, dc,
        np.empty_like(gates), np.int64(options[0]), np.int64(options[1]))
    _copy(_flat(frame, RETS, 0, dtype), _in_processing_order(dx, go_backwards))  # reversing restores the order
    _copy(_flat(frame, RETS, 1, dtype), dkernel)
    _copy(_flat(frame, RETS, 2, dtype), drecurrent_kernel)
    _copy(_flat(frame, RETS, 3, dtype), dbias)
    _copy(_flat(frame, RETS, 4, dtype), dh)
    _copy(_flat(frame, RETS, 5, dtype), dc)


@njit(inline="always")
def _run(frame_pointer, kernel, dtype):
    """The target's body: answers the metadata query, or runs ``kernel`` at the EXECUTE stage."""
    frame = _as_address(frame_pointer)
    if not _answered_metadata(frame) and _load_i32(frame + FRAME_STAGE) == EXECUTE:
        kernel(frame, dtype)
    return _as_pointer(0)


# One target per direction and dtype, each compiled on first use: a model in float32 never waits
# for the float64 ones.
def _forward_float32(frame_pointer):
    return _run(frame_pointer, _forward, np.float32)


def _forward_float64(frame_pointer):
    return _run(frame_pointer, _forward, np.float64)


def _backward_float32(frame_pointer):
    return _run(frame_pointer, _backward, np.float32)


def _backward_float64(frame_pointer):
    return _run(frame_pointer, _backward, np.float64)


TARGETS = {("forward", "float32"): _forward_float32, ("forward", "float64"): _forward_float64,
           ("backward", "float32"): _backward_float32, ("backward", "float64"): _backward_float64}


@functools.cache
def compiled(direction, dtype):
    """The compiled ``direction`` ('forward' or 'backward') target for ``dtype`` ('float32' or
    'float64'), a Numba cfunc compiled (or loaded from Numba's disk cache) on first use and kept
    alive for the process, since XLA and TensorFlow call it by its address."""
    return cfunc(types.voidptr(types.voidptr), cache=True)(TARGETS[direction, dtype])


@functools.cache
def target(direction, dtype):
    """The name of the ``direction`` target for ``dtype``, registered with XLA on first use."""
    import jax

    name = f"fastlstm_compiled_{direction}_{dtype}"
    address = ctypes.cast(compiled(direction, dtype).address, ctypes.c_void_p)
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(address), platform="cpu")
    return name
