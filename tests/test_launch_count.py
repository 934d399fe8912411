"""The launch plan's count of device operations per call, against FusedLSTM itself run on the CPU
through a stand-in for ``cupy`` that logs every operation CuPy would put on the stream: the
kernels (through the emulation harness), the products as CuPy's matmul issues them, copies,
fills, elementwise and reduction kernels. The stand-in offers only the functions it models, so
an operation FusedLSTM starts to use fails here until it is counted."""
import numpy as np
import pytest

from support.cuda_emulation import EmulatedLauncher, build
from fastlstm.backends.fused import FusedLSTM
from fastlstm.backends.plan import DeviceLimits, launch_count, plan_lstm
from fastlstm.ops import LSTMOptions
from support.lstm_testing import random_inputs

LIMITS = {"persistent": DeviceLimits(1024, 227 * 1024, 2), "cooperative": DeviceLimits(2, 227 * 1024, 2),
          "stepwise": DeviceLimits(1024, 64, 2)}


class DeviceArray(np.ndarray):
    """A NumPy array standing for a CuPy one: what CuPy would run on the device is logged."""

    log = []

    def copy(self, order="C"):
        DeviceArray.log.append("copy")
        return super().copy(order)

    def __setitem__(self, key, value):
        DeviceArray.log.append("copy into a slice")
        super().__setitem__(key, value)

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        DeviceArray.log.append(f"{ufunc.__name__}.{method}")  # `+=`, `.sum()`: one CuPy kernel each
        if out is not None:
            kwargs["out"] = tuple(map(_plain, out))
        result = getattr(ufunc, method)(*map(_plain, inputs), **kwargs)
        return out[0] if out is not None else np.asarray(result).view(DeviceArray)


def _plain(a):
    return a.view(np.ndarray) if isinstance(a, DeviceArray) else a


class FakeCupy:
    """The functions of ``cupy`` that FusedLSTM calls, each logging what CuPy runs for it."""

    @staticmethod
    def empty(shape, dtype):
        return np.empty(shape, dtype).view(DeviceArray)

    @staticmethod
    def empty_like(a):
        return np.empty_like(a)

    @staticmethod
    def zeros(shape, dtype):
        DeviceArray.log.append("memset")
        return np.zeros(shape, dtype).view(DeviceArray)

    @staticmethod
    def ascontiguousarray(a):
        if a.flags.c_contiguous:
            return a
        DeviceArray.log.append("copy")
        return np.ascontiguousarray(a).view(DeviceArray)

    @staticmethod
    def matmul(a, b, out=None):
        # cupy._core._routines_linalg.tensordot_core: a 1 x k by k x 1 product is a multiply and a
        # sum; otherwise one cuBLAS call after copying an operand that is neither C- nor F-contiguous.
        if a.shape[0] == b.shape[1] == 1:
            DeviceArray.log += ["multiply", "sum"]
        else:
            DeviceArray.log += ["copy of a strided operand" for m in (a, b)
                                if not (m.flags.c_contiguous or m.flags.f_contiguous)]
            DeviceArray.log.append("cuBLAS")
        result = np.matmul(_plain(a), _plain(b), out=None if out is None else _plain(out))
        return out if out is not None else result.view(DeviceArray)


@pytest.fixture(scope="module")
def emulated():
    return EmulatedLauncher(build())


def _logging(launcher):
    def launch(plan_launch, *arguments):
        DeviceArray.log.append(plan_launch.kernel)
        launcher(plan_launch, *arguments)

    return launch


CASES = [(path, shape, options) for path in sorted(LIMITS)
         for shape in [(1, 1, 1, 4), (3, 1, 2, 4), (1, 4, 1, 4), (3, 4, 2, 4)]
         for options in [dict(bias=True, go_backwards=False, return_sequences=True, final_state_gradients=False),
                         dict(bias=False, go_backwards=True, return_sequences=False, final_state_gradients=True)]]
IDS = ["{}-b{}-t{}-d{}-u{}-{}".format(path, *shape, "backwards" if options["go_backwards"] else "forwards")
       for path, shape, options in CASES]


def _run(emulated, path, shape, options):
    """The launch plan's count, and the operations logged by FusedLSTM's forward and by its backward."""
    batch, time, input_dim, units = shape
    inputs = random_inputs(np.random.default_rng(0), batch, time, input_dim, units, np.float32, options["bias"])
    lstm_options = LSTMOptions(return_sequences=options["return_sequences"], go_backwards=options["go_backwards"])
    engine = FusedLSTM(FakeCupy(), _logging(emulated), LIMITS[path], cooperative=True)
    plan = plan_lstm(batch, units, np.float32, LIMITS[path], True)
    assert plan.path == path

    DeviceArray.log = []
    outputs, h, c, saved = engine.forward(*(None if a is None else a.view(DeviceArray) for a in inputs.values()),
                                          lstm_options)
    forward = DeviceArray.log
    dy = np.ones_like(outputs)
    final = (np.ones_like(h), np.ones_like(c)) if options["final_state_gradients"] else (None, None)
    DeviceArray.log = []
    engine.backward(saved, dy, *final)
    count = launch_count(plan, batch, time, input_dim, units)
    return count, forward, DeviceArray.log


@pytest.mark.parametrize("path, shape, options", CASES, ids=IDS)
def test_the_plan_counts_every_device_operation_of_a_forward(emulated, path, shape, options):
    count, forward, _ = _run(emulated, path, shape, options)
    assert len(forward) == count.forward, forward


@pytest.mark.parametrize("path, shape, options", CASES, ids=IDS)
def test_the_plan_counts_every_device_operation_of_a_backward(emulated, path, shape, options):
    count, _, backward = _run(emulated, path, shape, options)
    assert len(backward) == count.backward, backward


def test_a_persistent_call_launches_its_kernel_beside_the_products_and_the_caches_copies_alone(emulated):
    # Forward: x into the saved inputs, x @ kernel, the kernel (which copies recurrent_kernel for
    # the cache), kernel copied; backward: the kernel, the weights' gradients (dbias too), dx.
    options = dict(bias=True, go_backwards=True, return_sequences=True, final_state_gradients=True)
    _, forward, backward = _run(emulated, "persistent", (3, 4, 2, 4), options)
    kernel = "fastlstm::persistent_{}<float>"
    assert forward == ["copy into a slice", "cuBLAS", kernel.format("forward"), "copy"]
    assert backward == [kernel.format("backward"), "cuBLAS", "cuBLAS"]
