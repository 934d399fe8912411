"""The sources of fastlstm.kernels (the checkout's kernels/): the activation ids that every kernel
takes exist once, in kernels/activation_ids.py, which lstm_common.cuh's ``enum Activation`` spells
alike for CUDA C; and the kernels stand alone, importing nothing of fastlstm (siblings relatively)."""
import ast
import pathlib
import re

import pytest

import fastlstm.kernels
from fastlstm.activations import ACTIVATIONS
from fastlstm.kernels.activation_ids import ACTIVATION_IDS, ACTIVATION_NAMES

KERNELS = pathlib.Path(fastlstm.kernels.__file__).parent
MODULES = sorted(KERNELS.glob("*.py"))


def _enum_activation(header):
    """{name in lower case: id} of the C++ ``enum Activation { NAME = id, ... };`` in header."""
    body = re.search(r"enum\s+Activation\s*\{([^}]*)\}", header).group(1)
    return {name.lower(): int(value) for name, value in re.findall(r"(\w+)\s*=\s*(\d+)", body)}


def test_the_cuda_enum_activation_spells_the_python_ids():
    assert _enum_activation((KERNELS / "lstm_common.cuh").read_text()) == ACTIVATION_IDS


def test_the_kernels_know_every_activation_of_fastlstm_and_no_other():
    assert ACTIVATION_NAMES == tuple(ACTIVATIONS)
    assert list(ACTIVATION_IDS.values()) == list(range(len(ACTIVATION_NAMES)))


def _absolute_imports(source, siblings):
    """The absolute imports in ``source`` of fastlstm or of one of ``siblings`` (module names)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        else:
            continue
        found += [name for name in names if name.split(".")[0] in {"fastlstm", "kernels", *siblings}]
    return found


def test_the_import_check_finds_fastlstm_and_siblings_imported_absolutely():
    source = "import fastlstm.utils\nfrom fastlstm import ops\nfrom cpu_matmul import matvec\nfrom . import cpu_lstm\n"
    assert _absolute_imports(source, {"cpu_matmul", "cpu_lstm"}) == ["fastlstm.utils", "fastlstm", "cpu_matmul"]


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.name)
def test_no_kernel_module_imports_fastlstm_and_siblings_come_relatively(module):
    assert _absolute_imports(module.read_text(), {path.stem for path in MODULES}) == []


def test_every_kernel_module_is_checked():
    assert {"activation_ids.py", "cpu_arithmetic.py", "cpu_lstm.py", "cpu_training.py", "numba_cuda.py"} <= \
        {path.name for path in MODULES}
