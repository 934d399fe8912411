"""A Python function as an XLA FFI target on the CPU, for ``jax.ffi.ffi_call``: XLA calls it with
the call's buffers, which the function reads and writes as NumPy arrays, without a copy.

Why not ``jax.pure_callback``: it copies every argument and result between XLA and NumPy and
hands them over through a host callback, about 0.2 ms a call on a 2-core CPU even for a few
numbers, several times the fused LSTM's own time at the tutorial's shapes. An FFI target is
called directly by the compiled XLA program, like any of its operations.

The handler follows XLA's C API for FFI handlers (``xla/ffi/api/c_api.h``): XLA first calls it
with a metadata extension, asking which version of the API it speaks (the one XLA offers), then at
each execution stage, of which only EXECUTE has work here. An exception becomes an XLA error,
which JAX raises in the caller with the exception's message.
"""
import ctypes
import math

import numpy as np

METADATA_EXTENSION = 1  # XLA_FFI_Extension_Metadata
EXECUTE = 3  # XLA_FFI_ExecutionStage_EXECUTE
INTERNAL = 13  # XLA_FFI_Error_Code_INTERNAL
# XLA_FFI_DataType: the dtypes the drop-in passes.
DTYPES = {1: np.dtype(bool), 4: np.dtype(np.int32), 5: np.dtype(np.int64), 11: np.dtype(np.float32),
          12: np.dtype(np.float64)}


class _Extension(ctypes.Structure):
    pass


_Extension._fields_ = [("struct_size", ctypes.c_size_t), ("type", ctypes.c_int),
                       ("next", ctypes.POINTER(_Extension))]


class _Version(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
                ("major", ctypes.c_int), ("minor", ctypes.c_int)]


class _Metadata(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("api_version", _Version), ("traits", ctypes.c_uint32)]


class _MetadataExtension(ctypes.Structure):
    _fields_ = [("base", _Extension), ("metadata", ctypes.POINTER(_Metadata))]


class _ErrorArguments(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
                ("message", ctypes.c_char_p), ("code", ctypes.c_int)]


class _Api(ctypes.Structure):
    """The start of XLA_FFI_Api: its version, then the function that makes an error."""

    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
                ("api_version", _Version), ("internal_api", ctypes.c_void_p),
                ("error_create", ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_ErrorArguments)))]


class _Buffers(ctypes.Structure):
    """XLA_FFI_Args and XLA_FFI_Rets, which share one layout: ``size`` pointers to XLA_FFI_Buffer."""

    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p), ("size", ctypes.c_int64),
                ("types", ctypes.POINTER(ctypes.c_int)), ("items", ctypes.POINTER(ctypes.c_void_p))]


class _Attributes(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p), ("size", ctypes.c_int64),
                ("types", ctypes.c_void_p), ("names", ctypes.c_void_p), ("items", ctypes.c_void_p)]


class _CallFrame(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.POINTER(_Extension)),
                ("api", ctypes.POINTER(_Api)), ("context", ctypes.c_void_p), ("stage", ctypes.c_int),
                ("args", _Buffers), ("rets", _Buffers), ("attrs", _Attributes), ("future", ctypes.c_void_p)]


class _Buffer(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p), ("dtype", ctypes.c_int),
                ("data", ctypes.c_void_p), ("rank", ctypes.c_int64), ("dims", ctypes.POINTER(ctypes.c_int64))]


_HANDLER = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_CallFrame))
_handlers = {}  # name -> its ctypes handler, kept alive for as long as XLA may call it


def register(name, function):
    """Registers ``function(arguments, results)`` as the XLA FFI target ``name`` on the CPU, once
    per name and process. It gets the call's arguments and its results as lists of NumPy arrays
    (views of XLA's buffers, valid during the call only) and must fill every result."""
    if name in _handlers:
        return
    import jax

    def handler(frame_pointer):
        frame = frame_pointer.contents
        if frame.extension_start and frame.extension_start.contents.type == METADATA_EXTENSION:
            metadata = ctypes.cast(frame.extension_start, ctypes.POINTER(_MetadataExtension)).contents.metadata.contents
            offered = frame.api.contents.api_version
            metadata.api_version.major, metadata.api_version.minor = offered.major, offered.minor
            metadata.traits = 0
            return None
        if frame.stage != EXECUTE:
            return None
        try:
            function(_arrays(frame.args), _arrays(frame.rets))
        except BaseException as error:  # noqa: BLE001 - XLA must get every failure as its error
            message = f"{name}: {type(error).__name__}: {error}".encode()
            arguments = _ErrorArguments(ctypes.sizeof(_ErrorArguments), None, message, INTERNAL)
            return frame.api.contents.error_create(ctypes.byref(arguments))
        return None

    _handlers[name] = _HANDLER(handler)
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(_handlers[name]), platform="cpu")


def _arrays(buffers):
    return [_array(buffers.items[i]) for i in range(buffers.size)]


def _array(pointer):
    """The XLA_FFI_Buffer at ``pointer`` as a NumPy array over its memory."""
    buffer = ctypes.cast(pointer, ctypes.POINTER(_Buffer)).contents
    if buffer.dtype not in DTYPES:
        raise TypeError(f"an XLA buffer of data type {buffer.dtype}, expected one of {sorted(DTYPES)} "
                        "(XLA_FFI_DataType: PRED, S32, S64, F32, F64)")
    dtype = DTYPES[buffer.dtype]
    shape = tuple(buffer.dims[i] for i in range(buffer.rank))
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes == 0:
        return np.empty(shape, dtype)
    return np.frombuffer((ctypes.c_char * nbytes).from_address(buffer.data), dtype).reshape(shape)
