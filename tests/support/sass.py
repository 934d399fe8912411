"""Instruction counts of the inner loops of a cubin's kernels, read from its SASS (nvdisasm).

A loop is a backward branch (a BRA whose target is at or before it); its body is the target up to
the branch. The inner loops are those whose body holds no other loop. For each, the counts the
GPU kernels are measured by: multiply-adds, shared and global loads, instructions, and, for a
loop with loads but no multiply-adds (a staging loop), how many loads a thread issues before it
waits for the first of them.

nvdisasm comes from the nvidia-cuda-nvdisasm wheel (nvidia/cu13/bin) or the PATH.
"""
import dataclasses
import importlib.util
import pathlib
import re
import shutil
import subprocess

FMA_OPCODES = ("FFMA", "DFMA", "HFMA2")
SHARED_LOADS = ("LDS", "LDSM")
GLOBAL_LOADS = ("LDG", "LD")  # LD is a generic load, which Numba's PTX can leave for global memory
STORES = ("ST", "STS", "STG", "STL", "RED")  # every operand of a store is read

_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_FUNCTION = re.compile(r"^\.text\.(\w+):")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)|\b0x([0-9a-f]+)\b")
_REGISTER = re.compile(r"\bR(\d+)\b(\.64|\.128)?")


@dataclasses.dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str    # with its modifiers: LDS.64, FFMA.FTZ
    operands: str  # as printed: "R4, [R2+0x10]"
    target: object = None  # a branch's target address

    @property
    def base(self):
        return self.opcode.split(".")[0]


@dataclasses.dataclass(frozen=True)
class Loop:
    """One inner loop's counts per iteration; ``start``/``end`` are the addresses of its first
    instruction and of its backward branch."""
    start: int
    end: int
    instructions: int
    fmas: dict         # {opcode: count}: FFMA, DFMA, HFMA2
    shared_loads: dict  # {width in bits: count}
    global_loads: int
    loads_in_flight: int  # loads issued before the first read of a loaded register

    @property
    def fma_count(self):
        return sum(self.fmas.values())

    @property
    def shared_load_count(self):
        return sum(self.shared_loads.values())

    @property
    def staging(self):
        """A loop that only moves data: loads, no multiply-adds."""
        return self.fma_count == 0 and self.shared_load_count + self.global_loads > 0

    def shared_loads_per_fma(self):
        return self.shared_load_count / self.fma_count

    def instructions_per_fma(self):
        return self.instructions / self.fma_count


def nvdisasm():
    """The nvdisasm executable: the nvidia-cuda-nvdisasm wheel's, else the PATH's."""
    spec = importlib.util.find_spec("nvidia")
    for root in spec.submodule_search_locations if spec else ():
        if (path := pathlib.Path(root) / "cu13" / "bin" / "nvdisasm").exists():
            return str(path)
    if path := shutil.which("nvdisasm"):
        return path
    raise FileNotFoundError("nvdisasm is not installed: pip install nvidia-cuda-nvdisasm (the 'test' extra)")


def disassemble(cubin):
    """nvdisasm's listing of the code sections of the cubin at ``cubin``."""
    result = subprocess.run([nvdisasm(), "--print-code", str(cubin)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nvdisasm failed on {cubin}: {result.stderr}")
    return result.stdout


def parse(listing):
    """{mangled kernel name: [Instruction]} from nvdisasm's listing; branch targets as addresses."""
    kernels, labels, name = {}, {}, None
    pending = []  # labels are printed before the instruction they name
    for line in listing.splitlines():
        if m := _FUNCTION.match(line):
            name = m.group(1)
            kernels[name], labels[name] = [], {}
        elif m := _LABEL.match(line):
            pending.append(m.group(1))
        elif name is not None and (m := _INSTRUCTION.search(line)):
            address = int(m.group(1), 16)
            labels[name].update(dict.fromkeys(pending, address))
            pending = []
            kernels[name].append(Instruction(address, m.group(3), m.group(4).strip()))
    for name, code in kernels.items():
        for n, instruction in enumerate(code):
            if instruction.base == "BRA" and (t := _TARGET.search(instruction.operands)):
                target = labels[name][t.group(1)] if t.group(1) else int(t.group(2), 16)
                code[n] = dataclasses.replace(instruction, target=target)
    return kernels


def _is_fma(instruction):
    """A multiply-add; not ptxas's idiom for a constant move, HFMA2.MMA Rd, -RZ, RZ, a, b."""
    factors = [o.strip().lstrip("-|") for o in instruction.operands.split(",")[1:3]]
    return instruction.base in FMA_OPCODES and factors != ["RZ", "RZ"]


def _width(opcode):
    sizes = [int(s) for s in re.findall(r"\.[US]?(8|16|32|64|128)\b", opcode)]
    return sizes[-1] if sizes else 32


def _registers(operand_text, wide):
    """The registers an operand list names; a register pair or quad (R2.64, or any operand of a
    64-bit instruction) counts all its registers."""
    names = set()
    for number, suffix in _REGISTER.findall(operand_text):
        count = {".64": 2, ".128": 4}.get(suffix, 2 if wide else 1)
        names.update(int(number) + k for k in range(count))
    return names


def _loads_in_flight(body):
    """Loads issued from the top of ``body`` until an instruction reads one of their results."""
    loaded, count = set(), 0
    for instruction in body:
        operands = [o.strip() for o in instruction.operands.split(",")]
        wide = instruction.base.startswith("D") or ".64" in instruction.opcode
        read = operands if instruction.base in STORES else operands[1:]
        if loaded & _registers(",".join(read), wide):
            break
        if instruction.base in SHARED_LOADS + GLOBAL_LOADS:
            count += 1
            if m := re.fullmatch(r"R(\d+)", operands[0]):
                first = int(m.group(1))
                loaded.update(range(first, first + max(1, _width(instruction.opcode) // 32)))
    return count


def inner_loops(code):
    """[Loop] for the inner loops of one kernel's instructions, in address order. Branches to the
    same target make one loop (a `continue`); a branch to itself (the trap after EXIT) is none."""
    ends = {}
    for instruction in code:
        if instruction.target is not None and instruction.target < instruction.address:
            ends[instruction.target] = max(ends.get(instruction.target, 0), instruction.address)
    spans = sorted(ends.items())
    loops = []
    for start, end in spans:
        if any((s, e) != (start, end) and start <= s and e <= end for s, e in spans):
            continue
        body = [i for i in code if start <= i.address <= end]
        fmas = {}
        shared = {}
        for instruction in body:
            if _is_fma(instruction):
                fmas[instruction.base] = fmas.get(instruction.base, 0) + 1
            elif instruction.base in SHARED_LOADS:
                width = _width(instruction.opcode)
                shared[width] = shared.get(width, 0) + 1
        global_loads = sum(i.base in GLOBAL_LOADS for i in body)
        loops.append(Loop(start, end, len(body), fmas, shared, global_loads, _loads_in_flight(body)))
    return loops


def cubin_loops(cubin):
    """{mangled kernel name: [Loop]} for every kernel in the cubin at ``cubin``."""
    return {name: inner_loops(code) for name, code in parse(disassemble(cubin)).items()}
