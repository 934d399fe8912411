"""The drop-in's crossing between a Keras backend and fastlstm (fastlstm/keras/bridges.py and
fused_call.py), on the Keras backend of this process: tests/test_keras_layer.py runs this file once
per backend, each in its own process, as it runs layer_suite.py.
"""
import functools
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

import fastlstm.keras.bridges
import fastlstm.keras.fused_call
from fastlstm.keras import LSTM
from fastlstm.keras.fused_call import KEPT_CALLS, FusedCall, Options, host_backward, host_forward
from fused_counting import count_fused_calls

BACKEND = keras.backend.backend()
assert BACKEND == os.environ["KERAS_BACKEND"], "run by tests/test_keras_layer.py with KERAS_BACKEND set"


def model_and_data(batch=3, time=4, features=2, units=5, masked=False):
    """A compiled model (a Masking layer before the LSTM if ``masked``), inputs (the last step of
    the first sample zeros, which the mask hides) and targets."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, time, features)).astype("float32")
    x[0, -1] = 0
    layers = [keras.layers.Masking(0.0)] if masked else []
    model = keras.Sequential([keras.Input(batch_shape=x.shape), *layers, LSTM(units), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    return model, x, rng.standard_normal((batch, 1)).astype("float32")


@pytest.fixture
def fused_calls(monkeypatch):
    """The fused calls from now on (a FusedCall each, which runs the forward once; a trace onto
    JAX's compiled targets each)."""
    return count_fused_calls(monkeypatch.setattr)


# (batch, time, units, masked): a small call, the same with a mask, and one large enough for the
# numba_cpu backend's stepwise path.
CALLS = {"small": (3, 4, 5, False), "masked": (3, 4, 5, True), "stepwise": (16, 16, 64, False)}


@pytest.mark.parametrize("call", CALLS)
def test_a_training_step_runs_the_forward_once(call, fused_calls):
    batch, time, units, masked = CALLS[call]
    model, x, y = model_and_data(batch, time, units=units, masked=masked)
    model.train_on_batch(x, y)  # traces and compiles the step, where the backend does
    fused_calls.clear()
    fastlstm.keras.fused_call._kept.clear()
    for _ in range(3):
        model.train_on_batch(x, y)
    # The backward takes the forward's activations, not a second forward; on JAX and TensorFlow a
    # small call without a mask runs on compiled targets, traced once and then with no Python at all.
    assert len(fused_calls) == (0 if BACKEND in ("jax", "tensorflow") and call == "small" else 3)
    assert len(fastlstm.keras.fused_call._kept) == 0  # and each backward took its own


@pytest.mark.parametrize("call", ["masked", "stepwise"])
def test_predict_keeps_no_cache_and_a_training_step_keeps_one(call, monkeypatch):
    """Where no gradient can be asked for (predict: JAX's undifferentiated call, TensorFlow's
    call outside training, PyTorch's under no_grad) the call runs lstm_forward(keep_cache=False);
    a training step keeps its cache for the backward."""
    batch, time, units, masked = CALLS[call]
    model, x, y = model_and_data(batch, time, units=units, masked=masked)
    model.train_on_batch(x, y)  # builds the step (on PyTorch, through a call without gradients)
    kept = []
    make = FusedCall.__init__

    def recording(self, *args, keep_cache=True, **kwargs):
        kept.append(keep_cache)
        make(self, *args, keep_cache=keep_cache, **kwargs)

    monkeypatch.setattr(FusedCall, "__init__", recording)
    np.asarray(model.predict_on_batch(x))
    assert kept and not any(kept)
    kept.clear()
    model.train_on_batch(x, y)
    assert kept and all(kept)


@pytest.mark.parametrize("step", ["predict_on_batch", "train_on_batch"])
def test_an_error_in_the_fused_call_reaches_the_caller_with_its_message(step, monkeypatch):
    model, x, y = model_and_data(masked=True)  # a mask: the call runs in Python on every backend

    def failing(*args, **kwargs):
        raise RuntimeError("the fused forward failed here")

    monkeypatch.setattr(fastlstm.keras.fused_call, "lstm_forward", failing)
    arguments = (x, y) if step == "train_on_batch" else (x,)
    # Read, since JAX dispatches a step asynchronously and raises its error where its result is read.
    with pytest.raises(Exception, match="the fused forward failed here"):
        np.asarray(getattr(model, step)(*arguments))


def host_inputs(rng, batch=2, time=3, features=2, units=4):
    shapes = [(batch, time, features), (features, 4 * units), (units, 4 * units), (4 * units,), (batch, units),
              (batch, units)]
    return [rng.standard_normal(s).astype("float32") for s in shapes]


def test_a_kept_forward_whose_backward_never_comes_is_let_go_and_a_late_backward_runs_it_again():
    options = Options("tanh", "sigmoid", True, False, False, "auto")
    rng = np.random.default_rng(1)
    inputs = host_inputs(rng)
    upstream = [rng.standard_normal(s).astype("float32") for s in [(2, 3, 4), (2, 4), (2, 4)]]
    fastlstm.keras.fused_call._kept.clear()
    *results, first = host_forward(options, True, *inputs)
    expected = host_backward(options, np.int32(0), *inputs, *upstream)  # key 0: never kept, run again
    for _ in range(KEPT_CALLS):
        host_forward(options, True, *inputs)
    assert len(fastlstm.keras.fused_call._kept) == KEPT_CALLS and int(first) not in fastlstm.keras.fused_call._kept
    for got, want in zip(host_backward(options, first, *inputs, *upstream), expected):
        np.testing.assert_array_equal(got, want)
    *_, key = host_forward(options, True, *inputs)
    for got, want in zip(host_backward(options, key, *inputs, *upstream), expected):  # the kept call
        np.testing.assert_array_equal(got, want)
    assert int(key) not in fastlstm.keras.fused_call._kept  # taken by its backward
    assert int(host_forward(options, False, *inputs)[-1]) == 0 and len(fastlstm.keras.fused_call._kept) == KEPT_CALLS - 1


if BACKEND == "jax":  # JAX's choice between an FFI target and a host callback
    @pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
    def test_off_the_cpu_jax_reaches_the_host_work_through_a_callback_with_the_same_results(masked, monkeypatch):
        import jax

        callbacks = []
        pure_callback = jax.pure_callback

        def counted(*args, **kwargs):
            callbacks.append(args[0])
            return pure_callback(*args, **kwargs)

        results = {}
        for on_cpu in (True, False):
            monkeypatch.setattr(fastlstm.keras.bridges, "_on_cpu", lambda: on_cpu)  # as on a GPU, where JAX uses one
            monkeypatch.setattr(jax, "pure_callback", counted)
            model, x, y = model_and_data(masked=masked)
            results[on_cpu] = [np.asarray(model.predict_on_batch(x))] + [np.asarray(model.train_on_batch(x, y))
                                                                          for _ in range(3)]
            assert bool(callbacks) != on_cpu
        for got, want in zip(results[False], results[True]):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


if BACKEND == "tensorflow":  # TensorFlow's compiled operations (fastlstm/keras/tf_lstm.py)
    import tensorflow as tf

    from fastlstm.keras import bridges, tf_lstm

    def count_host_forwards(monkeypatch):
        """A list that gets an entry for each call run as the host work from now on."""
        hosted = []
        monkeypatch.setattr(bridges, "host_forward", lambda *a: hosted.append(1) or host_forward(*a))
        return hosted

    def tensorflow_call(inputs, options, compiled, batch_known, monkeypatch):
        """Outputs, final states and every input's gradient of one call on the compiled operations
        (or, not ``compiled``, the host work), traced with the batch unknown unless ``batch_known``,
        as fit traces its step; and how many calls ran as the host work."""
        hosted = count_host_forwards(monkeypatch)
        if not compiled:
            monkeypatch.setattr(tf_lstm, "operations", lambda dtype: None)
        rng = np.random.default_rng(2)
        weights = [tf.constant(rng.standard_normal(s).astype(inputs[0].dtype.name)) for s in
                   [(inputs[0].shape[0], inputs[0].shape[1], inputs[2].shape[0]), inputs[4].shape, inputs[5].shape]]
        if not options.return_sequences:
            weights[0] = weights[0][:, -1]
        signature = [tf.TensorSpec((None if not batch_known and i in (0, 4, 5) else a.shape[0], *a.shape[1:]),
                                   a.dtype) for i, a in enumerate(inputs)]

        @tf.function(input_signature=signature)
        def call(*arguments):
            with tf.GradientTape() as tape:
                tape.watch(arguments)
                results = bridges._tensorflow(options, True, *arguments, None)
                loss = sum(tf.reduce_sum(r * w) for r, w in zip(results, weights))
            return [*results, *tape.gradient(loss, arguments)]

        return [r.numpy() for r in call(*inputs)], len(hosted)

    # (batch, time, units): small enough for the compiled operations, and as large as the stepwise path.
    @pytest.mark.parametrize("shape", [(3, 4, 5), (64, 16, 64)], ids=["one-call", "stepwise"])
    @pytest.mark.parametrize("batch_known", [True, False], ids=["batch-known", "batch-unknown"])
    @pytest.mark.parametrize("dtype, return_sequences, go_backwards",
                             [("float32", True, False), ("float32", False, True), ("float64", True, True)])
    def test_tensorflow_s_compiled_operations_give_the_host_work_s_results(
            shape, batch_known, dtype, return_sequences, go_backwards, monkeypatch):
        batch, time, units = shape
        inputs = [tf.constant(a.astype(dtype)) for a in host_inputs(np.random.default_rng(3), batch, time, 2, units)]
        options = Options("tanh", "sigmoid", return_sequences, go_backwards, False, "auto")
        with monkeypatch.context() as patch:
            want, _ = tensorflow_call(inputs, options, False, batch_known, patch)
        got, hosted = tensorflow_call(inputs, options, True, batch_known, monkeypatch)
        stepwise = shape == (64, 16, 64)
        assert hosted == (1 if stepwise else 0)  # the stepwise path's size still runs as the host work
        for g, w in zip(got, want):
            if stepwise:  # both on the host, whose weight gradients OpenBLAS's threads may sum in another order
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * np.abs(w).max())
            else:
                np.testing.assert_array_equal(g, w)

    def fresh_operations(monkeypatch):
        """tf_lstm's functions as on a process's first use (restored after the test)."""
        monkeypatch.setattr(tf_lstm, "_library", functools.cache(tf_lstm._library.__wrapped__))
        monkeypatch.setattr(tf_lstm, "operations", functools.cache(tf_lstm.operations.__wrapped__))

    def test_without_a_compiler_tensorflow_calls_the_host_work_after_one_warning(monkeypatch, tmp_path):
        monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
        monkeypatch.setenv("FASTLSTM_CACHE_DIR", str(tmp_path / "cache"))
        fresh_operations(monkeypatch)
        with pytest.warns(UserWarning, match=r"no C\+\+ compiler '.*no-such-compiler' was found.*tf.numpy_function"):
            assert tf_lstm.operations("float32") is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert tf_lstm.operations("float32") is None  # said once
        hosted = count_host_forwards(monkeypatch)
        model, x, y = model_and_data()
        model.train_on_batch(x, y)
        assert hosted == [1]

    @pytest.mark.parametrize("why", ["cache not writable", "no flock"])
    def test_where_nothing_can_be_built_the_warning_says_why(why, monkeypatch, tmp_path):
        fresh_operations(monkeypatch)
        if why == "cache not writable":
            (tmp_path / "file").write_text("")
            monkeypatch.setenv("FASTLSTM_CACHE_DIR", str(tmp_path / "file" / "cache"))
            expected = r"the cache directory .*/file/cache is not writable .*set FASTLSTM_CACHE_DIR"
        else:
            monkeypatch.setenv("FASTLSTM_CACHE_DIR", str(tmp_path / "cache"))
            monkeypatch.setitem(sys.modules, "fcntl", None)  # as on Windows: importing it fails
            expected = "its TensorFlow operation is built on Linux and macOS only"
        with pytest.warns(UserWarning, match=expected + ".*tf.numpy_function"):
            assert tf_lstm.operations("float32") is None

    def test_a_library_that_does_not_load_is_named_in_the_warning(monkeypatch, tmp_path):
        fresh_operations(monkeypatch)
        monkeypatch.setenv("FASTLSTM_CACHE_DIR", str(tmp_path))
        tf_lstm.library_path().write_text("not a shared library")
        with pytest.warns(UserWarning, match=r"operation .*\.so did not load .*remove the file to build it again"):
            assert tf_lstm.operations("float32") is None

    def fake_compiler(tmp_path, script):
        """A compiler that runs the shell ``script`` (its output file is "$OUT")."""
        path = tmp_path / "fake-c++"
        path.write_text('#!/bin/sh\nfor a; do [ "$prev" = -o ] && OUT=$a; prev=$a; done\n' + script)
        path.chmod(0o755)
        return str(path)

    def test_a_failed_build_says_why_and_leaves_no_file(monkeypatch, tmp_path):
        monkeypatch.setenv("CXX", fake_compiler(tmp_path, 'echo "tf_lstm.cc:1: error: no such header" >&2\nexit 1\n'))
        target = tmp_path / "cache" / "tf_lstm.so"
        target.parent.mkdir()
        failed = r"fake-c\+\+ exited with 1\):\ntf_lstm.cc:1: error: no such header"
        with pytest.raises(tf_lstm.BuildError, match=failed):
            with tf_lstm._building(target):
                pass
        assert list(target.parent.iterdir()) == []

    def running(pid):
        """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    def ended(pid, within=10):
        """Whether process ``pid`` ends within ``within`` seconds: a process sent SIGKILL ends when
        the scheduler next runs it, which on a loaded machine is not at once."""
        deadline = time.monotonic() + within
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        return not running(pid)

    @pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from Linux's /proc")
    @pytest.mark.parametrize("when", ["while Numba compiles", "while waiting for the compiler"])
    def test_an_interrupted_build_stops_the_compiler_and_its_children_and_leaves_no_file(when, monkeypatch,
                                                                                         tmp_path):
        child = tmp_path / "child"  # the compiler's child writes its pid here once it runs
        monkeypatch.setenv("CXX", fake_compiler(tmp_path, f'echo partial > "$OUT"\nsleep 60 &\necho $! > {child}\n'
                                                          'wait\n'))
        target = tmp_path / "cache" / "tf_lstm.so"
        target.parent.mkdir()
        started = []
        popen = subprocess.Popen

        def interrupted(*args, **kwargs):
            for _ in range(500):
                if child.exists() and child.read_text().strip():
                    break
                time.sleep(0.01)
            raise KeyboardInterrupt

        def watched(*args, **kwargs):
            started.append(popen(*args, **kwargs))
            if when == "while waiting for the compiler":
                started[-1].communicate = interrupted
            return started[-1]

        monkeypatch.setattr(subprocess, "Popen", watched)
        with pytest.raises(KeyboardInterrupt):
            with tf_lstm._building(target):
                if when == "while Numba compiles":
                    interrupted()
        assert ended(started[0].pid) and ended(int(child.read_text()))
        assert list(target.parent.iterdir()) == []

    def test_a_build_writes_the_library_under_its_name_and_nothing_else(monkeypatch, tmp_path, capsys):
        monkeypatch.setenv("CXX", fake_compiler(tmp_path, 'echo library > "$OUT"\n'))
        target = tmp_path / "cache" / "tf_lstm.so"
        target.parent.mkdir()
        with tf_lstm._building(target):
            pass
        assert list(target.parent.iterdir()) == [target] and target.read_text() == "library\n"
        assert f"building its TensorFlow operation into {target}" in capsys.readouterr().err

    def test_the_operations_this_process_loaded_were_built_into_the_cache_whole():
        assert tf_lstm.operations("float32") is not None
        assert tf_lstm.library_path().is_file() and not list(tf_lstm.cache_directory().glob("*.partial"))
