"""The stepwise path's machine code for CPUs this machine need not have: the packed product
(matmul_packed) and the pointwise steps (forward_step, infer_step) compiled (never run) for AVX-512
and AVX2 targets, each in a process of its own with NUMBA_CPU_NAME and NUMBA_CPU_FEATURES set and
a fresh Numba cache, and their loops read from the assembly."""
import json
import os
import re
import subprocess
import sys
import tempfile

import pytest

pytest.importorskip("numba")  # the 'test' extra installs it; CI runs these

# An empty NUMBA_CPU_FEATURES means the named CPU's own features: with none, Numba would take the
# host's, which turn AVX-512 off on a machine without it.
TARGETS = {"skylake-avx512": (8, 2, 512), "znver4": (8, 2, 512), "haswell": (6, 2, 256)}  # float32 rows, vectors, bits
FLOAT64_ROWS = 4  # on every target
# The vectors LLVM chooses for loops it vectorises itself: 256 bits on Skylake-X as well, whose
# clock drops under 512-bit work (LLVM's prefer-vector-width for it), 512 on Zen 4.
LOOP_REGISTERS = {"skylake-avx512": "ymm", "znver4": "zmm", "haswell": "ymm"}

_COMPILE = """
import json
from numba import types
from fastlstm.kernels import cpu_lstm, cpu_matmul
assembly = {}
for dtype in (types.float32, types.float64):
    rows, vector, index = types.Array(dtype, 2, "C"), types.Array(dtype, 1, "C"), types.int64
    signatures = {cpu_matmul.matmul_packed: (types.Array(dtype, 2, "A"), types.Array(dtype, 3, "C"),
                                             types.Array(dtype, 2, "A"), index),
                  cpu_lstm.forward_step: (rows, vector, rows, rows, rows, rows, index, index, index),
                  cpu_lstm.infer_step: (rows, vector, rows, rows, rows, index, index, index)}
    for kernel, signature in signatures.items():
        kernel.compile(signature)
        assembly[f"{kernel.py_func.__name__} {dtype}"] = kernel.inspect_asm(signature)
print(json.dumps({"target": cpu_matmul.describe_target(), "tile": cpu_matmul.TILE, "assembly": assembly}))
"""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """For each target: describe_target(), TILE and the assembly of each kernel per dtype (keys
    "matmul_packed float32" and so on), the targets compiled in parallel processes."""
    processes = {name: subprocess.Popen(
        [sys.executable, "-c", _COMPILE], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=tempfile.gettempdir(),
        env={**os.environ, "NUMBA_CPU_NAME": name, "NUMBA_CPU_FEATURES": "",
             "NUMBA_CACHE_DIR": str(tmp_path_factory.mktemp(name))}) for name in TARGETS}
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        results[name] = json.loads(stdout)
    return results


def innermost_loops(assembly):
    """The bodies of the single-block loops in AT&T assembly: the lines after a label up to a
    jump back to it, with no other label between."""
    lines = assembly.splitlines()
    loops = []
    for start, line in enumerate(lines):
        label = re.fullmatch(r"(\.\w+):.*", line.strip())
        if label:
            for end in range(start + 1, len(lines)):
                if re.fullmatch(r"\.\w+:.*", lines[end].strip()):
                    break
                if re.fullmatch(rf"j\w+\s+{re.escape(label.group(1))}", lines[end].strip()):
                    loops.append(lines[start + 1:end])
                    break
    return loops


def test_innermost_loops_are_the_blocks_that_jump_back_to_themselves():
    assembly = "f:\n\tmovq %rdi, %rax\n.LBB0_1:\n\tvfmadd231ps %ymm1, %ymm2, %ymm3\n\tjne\t.LBB0_1\n" \
               ".LBB0_2:\n\taddq $1, %rax\n.LBB0_3:\n\tjmp .LBB0_2\n\tjne .LBB0_3\n\tretq\n"
    assert innermost_loops(assembly) == [["\tvfmadd231ps %ymm1, %ymm2, %ymm3"], ["\tjmp .LBB0_2"]]


@pytest.mark.parametrize("name", TARGETS)
def test_the_tile_follows_numbas_cpu_target(compiled, name):
    rows, vectors, vector_bits = TARGETS[name]
    target = compiled[name]["target"]
    assert compiled[name]["tile"] == [rows, vectors, vector_bits, FLOAT64_ROWS]
    assert target == {"cpu_name": name, "vector_extensions": target["vector_extensions"], "vector_bits": vector_bits,
                      "tile": f"{rows} rows x {vectors} vectors of {vector_bits} bits ({FLOAT64_ROWS} rows in float64)"}
    assert {"avx2", "fma"} <= set(target["vector_extensions"])
    assert ("avx512f" in target["vector_extensions"]) == (vector_bits == 512)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", TARGETS)
def test_the_product_loop_keeps_a_tile_of_accumulators_in_vector_registers(compiled, name, dtype):
    """Every loop of fused multiply-adds works on vectors of the tile's width (zmm with AVX-512;
    ymm and no zmm anywhere with AVX2), into at least as many registers as the tile has
    accumulators, with no vector register spilled to the stack or reloaded from it. (A loop
    bound read from the stack, as LLVM does on znver4 with 8 row addresses live, costs a load
    every other iteration, not a spill of the tile.)"""
    rows, vectors, vector_bits = TARGETS[name]
    rows = rows if dtype == "float32" else FLOAT64_ROWS
    assembly = compiled[name]["assembly"][f"matmul_packed {dtype}"]
    register = {512: "zmm", 256: "ymm"}[vector_bits]
    suffix = {"float32": "ps", "float64": "pd"}[dtype]
    loops = [body for body in innermost_loops(assembly) if any("vfmadd" in line for line in body)]
    assert loops
    for body in loops:
        fmas = [line.split() for line in body if "vfmadd" in line]
        assert all(fma[0].endswith(suffix) and fma[-1].startswith(f"%{register}") for fma in fmas)
        assert len({fma[-1] for fma in fmas}) >= rows * vectors
        assert not any("(%rsp)" in line and re.search(r"%[xyz]mm", line) for line in body)
    if vector_bits < 512:
        assert "zmm" not in assembly


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", TARGETS)
@pytest.mark.parametrize("kernel, activations", [("forward_step", (4,)), ("infer_step", (3, 2))])
def test_the_pointwise_steps_activate_a_vector_of_units_at_a_time(compiled, name, dtype, kernel, activations):
    """With Keras's default activations, forward_step activates a unit's four gates in one loop,
    and infer_step three in the loop that makes c, then o and activation(c) in the one that makes
    h, each activation with one division: for each loop, a block of the code holds exactly that
    many divisions of whole vectors (LOOP_REGISTERS). (Where LLVM leaves such a loop scalar, as
    it did for arrays of any layout, it divides with vdivss or vdivsd.)"""
    register = LOOP_REGISTERS[name]
    division = {"float32": "vdivps", "float64": "vdivpd"}[dtype]
    blocks = re.split(r"\n\s*\.\w+:", compiled[name]["assembly"][f"{kernel} {dtype}"])
    divisions = {len(re.findall(rf"{division}\s[^\n]*%{register}\d+\s*$", block, re.M)) for block in blocks}
    assert set(activations) <= divisions
