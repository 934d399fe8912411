"""A minimal ctypes binding of NVRTC, so the compile gate can use more than one CUDA version's
compiler in one process (CUDA 13 for sm_80 and sm_90; CUDA 12, the last to target sm_70)."""
import ctypes
import pathlib


class NVRTCError(RuntimeError):
    pass


class NVRTC:
    def __init__(self, library):
        # NVRTC opens its builtins library by name at compile time; load it first from beside it.
        for builtins in sorted(pathlib.Path(library).parent.glob("libnvrtc-builtins.so.*")):
            ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
        self.lib = ctypes.CDLL(str(library))
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def _check(self, result, program=None):
        if result != 0:
            log = f"\n{self._log(program)}" if program is not None else ""
            raise NVRTCError(self.lib.nvrtcGetErrorString(result).decode() + log)

    def _log(self, program):
        size = ctypes.c_size_t()
        self.lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        self.lib.nvrtcGetProgramLog(program, log)
        return log.value.decode()

    def compile(self, source, name, headers, name_expressions, options):
        """Compiles ``source`` (with ``headers``, {include name: text}) to a cubin; returns
        (ptxas's log, {name expression: lowered name})."""
        def strings(items):
            return (ctypes.c_char_p * len(items))(*[s.encode() for s in items])

        program = ctypes.c_void_p()
        self._check(self.lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(), name.encode(), len(headers),
                                                strings(list(headers.values())), strings(list(headers))))
        try:
            for expression in name_expressions:
                self._check(self.lib.nvrtcAddNameExpression(program, expression.encode()))
            self._check(self.lib.nvrtcCompileProgram(program, len(options), strings(options)), program)
            lowered = {}
            for expression in name_expressions:
                pointer = ctypes.c_char_p()
                self._check(self.lib.nvrtcGetLoweredName(program, expression.encode(), ctypes.byref(pointer)))
                lowered[expression] = pointer.value.decode()
            return self._log(program), lowered
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(program))
