"""The PTX of the Numba CUDA kernels (kernels/numba_cuda.py) for the compile gate
(tests/test_numba_cuda.py), for compute capabilities 7.0, 8.0 and 9.0.

Each kernel is lowered to NVVM IR once (:func:`lower`), which is nearly all of the time (Numba
inlines the device functions in its own IR), and NVVM makes each capability's PTX from that IR
(:func:`write_ptx`). CUDA 13's NVVM no longer targets 7.0 (Volta), so for it the IR goes to the
NVVM of a CUDA 12 Numba stack of the same Numba version, which runs this file:

    python numba_ptx.py MAJOR.MINOR DIRECTORY      # DIRECTORY/NAME.nvvm.json -> DIRECTORY/NAME.smXY.ptx

That PTX is what a Volta user's Numba makes (checked: the same but for the module's name): the IR
is the same Numba's, whose lowering depends on the capability only through thresholds (6.0 for
float64 atomics, 7.5 for a fast-math tanh) that 7.0, 8.0 and 9.0 each pass.
"""
import json
import pathlib
import sys

from numba.cuda.cudadrv import nvrtc, nvvm


def lower(module, dtype, signatures, directory):
    """Lowers each {NAME: Numba signature string} kernel of ``module.kernels(dtype)``, with the
    module's launch bounds, as numba.cuda.compile_ptx would (whose internals it calls, to lower
    once for several capabilities), into directory/NAME.nvvm.json: the IR modules and NVVM options."""
    from numba.cuda import compiler

    for function, signature in signatures.items():
        library, _ = compiler._compile_pyfunc_with_fixup(
            module.kernels(dtype)[function].py_func, signature, device=False, cc=(9, 0), abi="numba",
            launch_bounds=module.launch_bounds(function, dtype))
        lowered = {"irs": library.llvm_strs, "options": library._nvvm_options}
        (pathlib.Path(directory) / f"{function}.nvvm.json").write_text(json.dumps(lowered))


def write_ptx(cc, directory):
    """directory/NAME.smXY.ptx for compute capability ``cc`` (X, Y) from each
    directory/NAME.nvvm.json, by this Numba's NVVM, as Numba's code library does."""
    for path in sorted(pathlib.Path(directory).glob("*.nvvm.json")):
        lowered = json.loads(path.read_text())
        ptx = nvvm.compile_ir(lowered["irs"], arch=nvrtc.get_arch_option(*cc), **lowered["options"])
        name = path.name.removesuffix(".nvvm.json")
        path.with_name(f"{name}.sm{cc[0]}{cc[1]}.ptx").write_text(ptx.decode().strip("\x00").strip())


if __name__ == "__main__":
    cc, directory = sys.argv[1:]
    write_ptx(tuple(map(int, cc.split("."))), directory)
