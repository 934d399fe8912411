"""The compile gate: every kernel instance the backends can request, built for sm_70, sm_80 and
sm_90 with NVRTC under CuPy's own options and, where it still targets the architecture, with nvcc,
reading ptxas's report. Fails on a compile error, any spill or local memory, more registers than
the largest block the plan launches allows, or shared memory over what the plan assumed the
architecture has. The report (registers and shared memory per instance) is written to
build/compile-gate.md, with the sm_90 nvcc build's inner loops counted from its SASS (multiply-adds,
shared loads and instructions per multiply-add, loads in flight in the staging loops) beside their
targets, which the gate asserts: every dot-product loop (a multiply-add loop that reads shared
memory) of a persistent or cooperative kernel at most FMA_TARGETS' shared loads and instructions
per multiply-add, and its staging at least STAGING_TARGET loads in flight.

CUDA 13 no longer targets sm_70 (Volta), so sm_70 is built with NVRTC 12 (the 'test' extra
installs it), as a Volta user with CuPy for CUDA 12 would; sm_80 and sm_90 with NVRTC 13 and the
machine's nvcc 13.
"""
import importlib.util
import pathlib
import re
import subprocess

import numpy as np
import pytest

from fastlstm.backends.cupy import KERNELS, NVRTC_OPTIONS
from fastlstm.backends.plan import (ARCHITECTURES, C_TYPES, COOPERATIVE_THREADS, PERSISTENT_THREADS, ROWS_PER_THREAD,
                                    all_instances, plan_lstm, recurrent_row_length, thread_groups)

from support import sass
from support.nvrtc import NVRTC

CUPY_OPTIONS = ["-ftz=true", "--device-as-default-execution-space"]  # what CuPy adds for NVRTC
NVRTC_LIBRARIES = {"sm_70": "cuda_nvrtc/lib/libnvrtc.so.12", "sm_80": "cu13/lib/libnvrtc.so.13",
                   "sm_90": "cu13/lib/libnvrtc.so.13"}
NVCC_ARCHITECTURES = {"sm_80", "sm_90"}
PTXAS_FLAGS = ["-v", "-warn-spills", "-warn-lmem-usage"]
REGISTERS_PER_BLOCK = 65536
SASS_ARCHITECTURE = "sm_90"
# Per multiply-add in every multiply-add loop: (shared loads, instructions) at most.
# The cooperative forward reads each row's h from the staged pass of its own address, a little
# more than the persistent forward's 2.0 instructions.
FMA_TARGETS = {"persistent_forward": (0.5, 2.0), "persistent_backward": (1.0, 2.5),
               "cooperative::forward": (0.5, 2.25), "cooperative::backward": (1.0, 2.5)}
STAGING_TARGET = 4  # loads in flight per thread while recurrent_kernel is staged, at least


def _sources():
    return sorted({source for source, _ in all_instances()})


def _nvrtc(arch):
    for root in importlib.util.find_spec("nvidia").submodule_search_locations:
        library = pathlib.Path(root) / NVRTC_LIBRARIES[arch]
        if library.exists():
            return NVRTC(library)
    pytest.fail(f"{NVRTC_LIBRARIES[arch]} is not installed: pip install '.[test]'")


def _lowered_names(source, arch):
    """Compiles ``source`` with NVRTC as CuPy would; returns (log, {name expression: mangled name})."""
    headers = {h.name: h.read_text() for h in sorted(KERNELS.glob("*.cuh"))}
    names = [name for s, name in all_instances() if s == source]
    options = [*CUPY_OPTIONS, f"-arch={arch}", *NVRTC_OPTIONS, *(f"-Xptxas={f}" for f in PTXAS_FLAGS)]
    return _nvrtc(arch).compile((KERNELS / source).read_text(), source, headers, names, options)


def _nvcc_log(source, arch, names, tmp_path):
    """Compiles ``source`` with nvcc, every instance kept alive by taking its address; returns
    (ptxas's log, the cubin's path)."""
    unit = tmp_path / f"gate_{source}"
    unit.write_text(f'#include "{source}"\nvoid* instances[] = {{'
                    + ", ".join(f"(void*)&{name}" for name in names) + "};\n")
    result = subprocess.run(
        ["nvcc", "-cubin", f"-arch={arch}", "-std=c++17", f"-I{KERNELS}", "-Xptxas", ",".join(PTXAS_FLAGS),
         "-o", str(unit.with_suffix(".cubin")), str(unit)],
        capture_output=True, text=True)
    assert result.returncode == 0, f"nvcc failed on {source} for {arch}:\n{result.stderr}"
    return result.stdout + result.stderr, unit.with_suffix(".cubin")


def _parse(log):
    """{mangled name: {registers, static shared, stack, spills}} from ptxas's -v report."""
    report, current = {}, None
    for line in log.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            current = report.setdefault(m.group(1), {})
        elif current is not None and (m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                                                     r"(\d+) bytes spill loads", line)):
            current.update(stack=int(m.group(1)), spills=int(m.group(2)) + int(m.group(3)))
        elif current is not None and (m := re.search(r"Used (\d+) registers", line)):
            shared = re.search(r"(\d+) bytes smem", line)
            current.update(registers=int(m.group(1)), shared=int(shared.group(1)) if shared else 0)
    return report


def _largest_plan(name, arch):
    """(threads per block, dynamic shared bytes): the largest the plan ever asks of ``name`` on ``arch``."""
    dtype = next(np.dtype(d) for d, c in C_TYPES.items() if f"<{c}>" in name)
    launches = [launch for units in (*range(1, 257), 512, 1024, 2048) for batch in (1, 7, 4096)
                for cooperative in (False, True)
                for launch in plan_lstm(batch, units, dtype, ARCHITECTURES[arch], cooperative)[1:3]
                if launch.kernel == name]
    return max(launch.block[0] for launch in launches), max(launch.shared_memory for launch in launches)


def _kernel(name):
    """'persistent_forward' of 'fastlstm::persistent_forward<float>', 'cooperative::forward' of
    'fastlstm::cooperative::forward<float>'."""
    return re.search(r"^fastlstm::([\w:]+)<", name).group(1)


def _dot_product(loop):
    """Whether an inner loop is a dot product: multiply-adds over operands in shared memory (a
    loop of pointwise arithmetic has multiply-adds and no shared load)."""
    return loop.fma_count and loop.shared_loads


def _loop_rows(name, loops):
    """The SASS report's rows for one instance's inner loops: those with multiply-adds, and the
    staging loops; an instance with neither gets one row that says so."""
    kernel = _kernel(name)
    rows = []
    for loop in loops:
        span = f"{loop.start:#06x}-{loop.end:#06x}"
        shared = " + ".join(f"{n}x{width}b" for width, n in sorted(loop.shared_loads.items())) or "0"
        fmas = " + ".join(f"{n} {opcode}" for opcode, n in sorted(loop.fmas.items()))
        if loop.fma_count:
            target = FMA_TARGETS.get(kernel) if _dot_product(loop) else None
            rows.append((name, span, fmas, shared, loop.global_loads, loop.instructions,
                         f"{loop.shared_loads_per_fma():.2f}", f"{loop.instructions_per_fma():.2f}", "",
                         f"<= {target[0]} shared, <= {target[1]} instructions" if target else ""))
        elif loop.staging:
            rows.append((name, span, "0", shared, loop.global_loads, loop.instructions, "", "",
                         loop.loads_in_flight, f">= {STAGING_TARGET} in flight" if kernel in FMA_TARGETS else ""))
    return rows or [(name, "no inner loop", "", "", "", "", "", "", "", "")]


REPORT = []
LOOP_REPORT = []


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("source", _sources())
def test_every_instance_compiles_without_spills_within_the_plans_budget(source, arch, tmp_path):
    logs = {}
    logs["nvrtc"], lowered = _lowered_names(source, arch)
    if arch in NVCC_ARCHITECTURES:
        logs["nvcc"], cubin = _nvcc_log(source, arch, list(lowered), tmp_path)
    if arch == SASS_ARCHITECTURE:
        loops = sass.cubin_loops(cubin)
        for name, mangled in lowered.items():
            if _kernel(name) in FMA_TARGETS:
                found = loops[mangled]
                assert any(loop.fma_count for loop in found) and any(loop.staging for loop in found), \
                    f"{name}: expected a multiply-add loop and a staging loop in its SASS, got {found}"
                # Staging's main loop (its remainder, which takes fewer than STAGING_TARGET elements
                # a thread, loads one at a time).
                in_flight = max(loop.loads_in_flight for loop in found if loop.staging)
                assert in_flight >= STAGING_TARGET, f"{name}: staging keeps {in_flight} loads in flight"
                # Every dot-product loop, the unrolled one and its remainder.
                shared_target, instruction_target = FMA_TARGETS[_kernel(name)]
                assert any(_dot_product(loop) for loop in found), f"{name}: no dot-product loop in {found}"
                for loop in (loop for loop in found if _dot_product(loop)):
                    assert loop.shared_loads_per_fma() <= shared_target, f"{name}: {loop}"
                    assert loop.instructions_per_fma() <= instruction_target, f"{name}: {loop}"
            LOOP_REPORT.extend(_loop_rows(name, loops[mangled]))
    limit = ARCHITECTURES[arch].shared_memory_per_block_optin
    for compiler, log in logs.items():
        ptxas_warnings = [line for line in log.splitlines() if line.startswith("ptxas") and "warning" in line]
        assert not ptxas_warnings, f"{compiler} {arch}: {ptxas_warnings}"
        report = _parse(log)
        for name, mangled in lowered.items():
            entry = report[mangled]
            threads, dynamic = _largest_plan(name, arch)
            assert entry["spills"] == 0 and entry["stack"] == 0, f"{compiler} {arch} {name}: {entry}"
            # Registers are allocated per warp, in granules of 8 per thread.
            allocated = -(-entry["registers"] // 8) * 8 * -(-threads // 32) * 32
            assert allocated <= REGISTERS_PER_BLOCK, f"{compiler} {arch} {name}: {entry}, {threads} threads"
            assert entry["shared"] + dynamic <= limit, f"{compiler} {arch} {name}: {entry}, plan {dynamic}"
            REPORT.append((arch, compiler, name, entry["registers"], entry["shared"], dynamic, threads))


@pytest.mark.parametrize("cooperative", [False, True])
def test_the_plan_never_asks_for_more_than_a_block_can_have(cooperative):
    for arch, limits in ARCHITECTURES.items():
        for dtype in C_TYPES:
            for units in (*range(1, 300), 511, 512, 1024, 2048):
                for batch in (1, 3, 131, 4096):
                    plan = plan_lstm(batch, units, dtype, limits, cooperative)
                    for launch in (plan.forward, plan.backward):
                        assert launch.block[0] <= limits.max_threads_per_block
                        assert launch.shared_memory <= limits.shared_memory_per_block_optin
                        assert launch.cooperative == (plan.path == "cooperative")
                        if plan.path == "persistent":
                            assert launch.grid[0] * plan.rows >= batch
                            # One wave of blocks where the cooperative path could take the rest.
                            assert not cooperative or launch.grid[0] <= limits.multiprocessors
                        elif plan.path == "cooperative":
                            # Every block resident at once: at most one a multiprocessor; a block per
                            # slice of units and tile of whole row groups, none empty.
                            slices = -(-units // plan.slice)
                            tiles = launch.grid[0] // slices
                            assert launch.grid[0] <= limits.multiprocessors and launch.grid[0] == slices * tiles
                            assert slices * plan.slice >= units > (slices - 1) * plan.slice
                            assert tiles * plan.rows >= batch > (tiles - 1) * plan.rows
                            assert plan.rows % ROWS_PER_THREAD == 0
                            assert launch.block[0] % plan.slice == 0
                            assert launch.block[0] <= COOPERATIVE_THREADS[np.dtype(dtype).itemsize]
                        else:
                            assert launch.grid[0] * launch.block[0] >= batch * units


def test_the_persistent_plan_fills_whole_row_groups_within_each_dtypes_launch_bound():
    # A thread computes ROWS_PER_THREAD rows whether they exist or not: a block's rows are whole
    # groups unless the batch has fewer, and its threads one per (group, unit).
    for arch, limits in ARCHITECTURES.items():
        for dtype in C_TYPES:
            for units in (1, 16, 33, 50, 81, 116):
                for batch in (1, 3, 5, 131, 4096):
                    plan = plan_lstm(batch, units, dtype, limits)
                    if plan.path != "persistent":
                        continue
                    assert plan.rows % ROWS_PER_THREAD == 0 or plan.rows == batch, (arch, dtype, units, batch)
                    assert plan.forward.block[0] == thread_groups(plan.rows) * units
                    assert plan.forward.block[0] <= PERSISTENT_THREADS[np.dtype(dtype).itemsize]


def test_staged_rows_are_an_odd_number_of_whole_16_byte_vectors():
    # 16-byte aligned rows for the backward's vector reads, and an odd count of vectors, so that the
    # 8 threads of a 128-bit load's phase, each at the start of its own row, hit 8 distinct banks.
    for itemsize in (4, 8):
        for units in range(1, 130):
            length = recurrent_row_length(units, itemsize)
            assert length >= 4 * units + 1 and length * itemsize % 16 == 0
            starts = {row * length * itemsize // 16 % 8 for row in range(8)}
            assert len(starts) == 8, (itemsize, units, length)


@pytest.fixture(scope="module", autouse=True)
def write_report(request):
    yield
    if REPORT:
        path = pathlib.Path(request.config.rootpath) / "build" / "compile-gate.md"
        path.parent.mkdir(exist_ok=True)
        rows = ["| arch | compiler | instance | registers | static smem | largest dynamic smem planned | "
                "largest block planned |", "|---|---|---|---|---|---|---|"]
        rows += [f"| {a} | {c} | `{n}` | {r} | {s} | {d} | {t} |" for a, c, n, r, s, d, t in sorted(REPORT)]
        rows += ["", f"## Inner loops ({SASS_ARCHITECTURE}, nvcc), per iteration", "",
                 "| instance | loop | FMAs | shared loads | global loads | instructions | shared loads per FMA | "
                 "instructions per FMA | loads in flight | target |", "|---|---|---|---|---|---|---|---|---|---|"]
        rows += [f"| `{name}` | " + " | ".join(map(str, rest)) + " |"
                 for name, *rest in sorted(LOOP_REPORT, key=lambda row: row[:2])]
        path.write_text("\n".join(rows) + "\n")
