"""fastlstm.keras.LSTM against keras.layers.LSTM on the Keras backend of this process.

KERAS_BACKEND must be set before keras is imported, so tests/test_keras_layer.py runs this file
once per installed backend, each in its own process (its name keeps the main run from
collecting it). The same model is built twice, once with each layer, with the same weights:
outputs, final states and the gradients of the inputs, the initial state and every weight must
agree within TOLERANCE, measured as max|drop-in - keras| / max(1, max|keras|) per array; so must
the loss at each of 20 training steps (LOSS_TOLERANCE, relative) and the weights after them.
Under dtype policies that compute in 16 bits, where Keras's layer rounds every operation and the
drop-in only its results, both are compared with Keras's float32 layer instead.
"""
import os
import warnings

import keras
import numpy as np
import pytest

import fastlstm.keras
from fastlstm.keras import LSTM, reset_states, with_batch_size
from fused_counting import count_fused_calls
from support.lstm_testing import relative_error

BACKEND = keras.backend.backend()
assert BACKEND == os.environ["KERAS_BACKEND"], "run by tests/test_keras_layer.py with KERAS_BACKEND set"
# Measured over the cases below on TensorFlow, PyTorch and JAX (CPU): float32 median 2.4e-7,
# worst 6.9e-7 (a recurrent-kernel gradient, go_backwards, TensorFlow); float64 worst 4.3e-16.
# Training: the loss within 2.0e-7 relative at every step, the weights within 7.3e-7 after 20
# Adam steps.
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}
LOSS_TOLERANCE = 1e-6
WEIGHT_TOLERANCE = 1e-5

SHAPE = (6, 7, 3)  # [batch, time, features]
UNITS = 8
# Each row of a mask marks a sample's valid steps; the masked ones are zeros in the data, which
# a Masking layer turns into the layer's mask.
MASKS = {
    "right_padded": [[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4, [1] * 5 + [0] * 2, [1] + [0] * 6, [1] * 7],
    "left_padded": [[1] * 7, [0] * 2 + [1] * 5, [0] * 4 + [1] * 3, [0] * 6 + [1], [0] * 2 + [1] * 5, [1] * 7],
    "holes": [[1, 0, 1, 1, 0, 0, 1], [0, 1, 1, 0, 1, 1, 0], [0] * 7, [1] * 7, [0, 0, 0, 1, 0, 0, 0], [1, 0, 1, 1, 0, 0, 1]],
}
CASES = {
    "plain": dict(),
    "return_sequences": dict(return_sequences=True),
    "go_backwards": dict(go_backwards=True, return_sequences=True),
    "no_bias": dict(use_bias=False),
    "initial_state": dict(initial_state=True, return_sequences=True),
    "activations": dict(activation="relu", recurrent_activation="hard_sigmoid", return_sequences=True),
    "softsign_linear": dict(activation="softsign", recurrent_activation=None),
    # use_cudnn=False: Keras's own fused path on PyTorch (taken with use_cudnn='auto', on a CPU
    # too) reads the state variable that the call then assigns in place, which breaks Keras's
    # backward; the drop-in runs fastlstm either way.
    "stateful": dict(stateful=True, return_sequences=True, use_cudnn=False),
    "dropout": dict(dropout=0.4, seed=3, training=True, return_sequences=True),
    "recurrent_dropout_inference": dict(recurrent_dropout=0.4, training=False),
    "float64": dict(dtype="float64", return_sequences=True),
    "right_padded": dict(mask="right_padded", return_sequences=True),
    "right_padded_last": dict(mask="right_padded"),
    "left_padded": dict(mask="left_padded", go_backwards=True, return_sequences=True),
    "holes": dict(mask="holes", return_sequences=True, initial_state=True),
    "holes_zero_output": dict(mask="holes", zero_output_for_mask=True, return_sequences=True),
    "holes_zero_output_last": dict(mask="holes", zero_output_for_mask=True, go_backwards=True),
}


@pytest.fixture(autouse=True)
def seeded():
    """The same initial weights in every run."""
    keras.utils.set_random_seed(0)


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts fastlstm's fused calls: a test that means to compare fastlstm with Keras checks
    that fastlstm really ran (and Keras's fallback did not stand in for it)."""
    return count_fused_calls(monkeypatch.setattr)


@pytest.fixture
def fallback_warnings(monkeypatch):
    """A function that lists the drop-in's fallback warnings issued so far in the test, the first
    of each reason included however many earlier tests issued it."""
    monkeypatch.setattr(fastlstm.keras, "_warned", set())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        yield lambda: [str(w.message) for w in record if str(w.message).startswith("fastlstm.keras.LSTM:")]


def case_inputs(rng, dtype="float32", mask=None, initial_state=False):
    """[x (, h0, c0)]: x zero at the steps the mask hides."""
    x = rng.standard_normal(SHAPE).astype(dtype)
    if mask is not None:
        x *= np.array(MASKS[mask], dtype)[:, :, None]
    states = [rng.standard_normal((SHAPE[0], UNITS)).astype(dtype) for _ in range(2)] if initial_state else []
    return [x, *states]


def build(layer_class, mask=None, initial_state=False, dtype="float32", policy=None, **options):
    """A functional model: [x (, h0, c0)] -> the layer's [outputs, h, c]; inputs of ``dtype``,
    layers of the dtype policy ``policy`` (``dtype`` if None)."""
    policy = policy or dtype
    x = keras.Input(batch_shape=SHAPE, dtype=dtype)
    states = [keras.Input(batch_shape=(SHAPE[0], UNITS), dtype=dtype) for _ in range(2)] if initial_state else []
    sequence = keras.layers.Masking(0.0, dtype=policy)(x) if mask else x
    layer = layer_class(UNITS, return_state=True, dtype=policy, **options)
    outputs = layer(sequence, initial_state=states or None)
    return keras.Model([x, *states], outputs)


def forward_and_gradients(model, inputs, probes, training):
    """The model's outputs, and the gradients of sum(probe * output) (the output cast to the
    probe's dtype) with respect to each input and each trainable weight, as NumPy arrays."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        inputs = [tf.constant(a) for a in inputs]
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = model(inputs, training=training)
            loss = sum(tf.reduce_sum(keras.ops.cast(o, p.dtype) * p) for o, p in zip(outputs, probes))
        grads = tape.gradient(loss, [*inputs, *model.trainable_weights])
    elif BACKEND == "torch":
        import torch

        inputs = [torch.tensor(a, requires_grad=True) for a in inputs]
        outputs = model(inputs, training=training)
        sum((keras.ops.cast(o, p.dtype) * torch.tensor(p)).sum() for o, p in zip(outputs, probes)).backward()
        grads = [*(a.grad for a in inputs), *(w.value.grad for w in model.trainable_weights)]
    else:
        import jax
        import jax.numpy as jnp

        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        def loss(inputs, trainable):
            outputs, _ = model.stateless_call(trainable, non_trainable, inputs, training=training)
            return sum(jnp.sum(keras.ops.cast(o, p.dtype) * p) for o, p in zip(outputs, probes)), outputs

        # Compiled whole, as Keras's fit and predict run a JAX model (and faster than op by op).
        gradients = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))
        (_, outputs), (d_inputs, d_weights) = gradients(inputs, trainable)
        grads = [*d_inputs, *d_weights]
    return [keras.ops.convert_to_numpy(a) for a in (*outputs, *grads)]


def result_names(inputs, model):
    """The names of forward_and_gradients's results, in order."""
    return ["outputs", "h", "c", *(f"d{n}" for n in ["x", "h0", "c0"][:len(inputs)]),
            *(f"d{w.name}" for w in model.trainable_weights)]


def checked_error(mine, reference):
    """relative_error of two arrays of one shape and dtype."""
    assert mine.shape == reference.shape and mine.dtype == reference.dtype
    return relative_error(mine, reference)


@pytest.mark.parametrize("name", CASES)
def test_outputs_states_and_gradients_match_keras(name, fused_calls):
    options = dict(CASES[name])
    training = options.pop("training", None)
    rng = np.random.default_rng(list(map(ord, name)))
    inputs = case_inputs(rng, options.get("dtype", "float32"), options.get("mask"), options.get("initial_state", False))
    theirs_model, ours_model = build(keras.layers.LSTM, **options), build(LSTM, **options)
    ours_model.set_weights(theirs_model.get_weights())
    probes = [rng.standard_normal(o.shape).astype(inputs[0].dtype) for o in theirs_model.outputs]
    # A stateful layer's second call starts from the state the first left.
    for _ in range(2 if options.get("stateful") else 1):
        theirs = forward_and_gradients(theirs_model, inputs, probes, training)
        ours = forward_and_gradients(ours_model, inputs, probes, training)
    names = result_names(inputs, theirs_model)
    errors = {n: checked_error(m, r) for n, m, r in zip(names, ours, theirs)}
    worst = max(errors, key=errors.get)
    print(f"{BACKEND} {name}: worst {worst} {errors[worst]:.1e}")
    assert len(errors) == len(names) == len(ours)
    # (JAX computes float64 in float32 unless jax_enable_x64 is set: the outputs' dtype says which.)
    assert errors[worst] <= TOLERANCE[theirs[0].dtype.name], f"{worst} differs by {errors[worst]:.2e}: {errors}"
    assert fused_calls


# Dtype policies that compute in 16 bits, by their compute dtype: the mixed ones keep float32
# variables, the others 16-bit ones. Keras computes the layer in 16 bits; the drop-in computes
# in float32 from the 16-bit inputs and weights and rounds its results to 16 bits.
POLICIES_16_BITS = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16", "float16": "float16",
                    "bfloat16": "bfloat16"}
CASES_16_BITS = ["plain", "return_sequences", "go_backwards", "no_bias", "initial_state", "holes", "stateful"]
EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7}  # the distance from 1 to the next number
# Keras's PyTorch backend loses a stateful layer's state under a mixed policy: the RNN assigns it
# inside the autocast scope, where the state variable's value is a 16-bit copy. So both layers
# start every call from zeros there, and the float32 reference is reset before each call to match.
STATE_LOST_UNDER_MIXED_POLICY = BACKEND == "torch"


# Every case under a mixed and a pure 16-bit policy, one of each 16-bit dtype; the other two
# policies on the plain and the stateful layer (the full product took a minute of CI per backend).
POLICY_CASES = [(policy, name) for policy in ("mixed_float16", "bfloat16") for name in CASES_16_BITS] + \
    [(policy, name) for policy in ("mixed_bfloat16", "float16") for name in ("plain", "stateful")]


def rounded(a, dtype):
    """The float32 array ``a`` rounded to ``dtype``, as float32."""
    return keras.ops.convert_to_numpy(keras.ops.cast(keras.ops.cast(a, dtype), "float32"))


def dtypes(arrays):
    """The arrays' dtypes, by Keras's names."""
    return [keras.backend.standardize_dtype(a.dtype) for a in arrays]


# Each array's error in eps of the 16-bit dtype, as relative_error against Keras's float32 layer
# on the same 16-bit inputs, weights and probes. Measured over these cases and policies on
# TensorFlow, PyTorch and JAX (CPU): the drop-in within 0.76 eps of float32 (a recurrent-kernel
# gradient, float16 policy, stateful, PyTorch; 0.46 eps elsewhere), Keras's own layer within 2.38
# eps, the two within 2.47 eps of each other; under a mixed policy the drop-in's weight gradients
# within 5.6e-7 of float32's. Asserted for each array: the drop-in within 1 eps of float32, and at
# least as close as Keras's layer (or within the 0.5 eps that rounding a result to 16 bits takes
# alone); the two within 3 eps of each other.
@pytest.mark.parametrize("policy, name", POLICY_CASES, ids=[f"{policy}-{name}" for policy, name in POLICY_CASES])
def test_16_bit_policies_are_closer_to_float32_than_keras(policy, name, fused_calls, fallback_warnings):
    dtype, mixed, stateful = POLICIES_16_BITS[policy], policy.startswith("mixed"), CASES[name].get("stateful")
    # Keras's default orthogonal initializer fails in 16 bits on PyTorch and JAX (its weights are replaced below).
    options = dict(CASES[name], recurrent_initializer="glorot_uniform")
    rng = np.random.default_rng(list(map(ord, name)))
    inputs = case_inputs(rng, "float32", options.get("mask"), options.get("initial_state", False))
    inputs = [rounded(a, dtype) for a in inputs]
    reference_model = build(keras.layers.LSTM, **options)
    theirs_model, ours_model = (build(layer_class, policy=policy, **options)
                                for layer_class in (keras.layers.LSTM, LSTM))
    theirs_model.set_weights(reference_model.get_weights())
    reference_model.set_weights(theirs_model.get_weights())  # rounded to 16 bits under a 16-bit variable dtype
    ours_model.set_weights(theirs_model.get_weights())
    probes = [rounded(rng.standard_normal(o.shape).astype("float32"), dtype) for o in theirs_model.outputs]
    for _ in range(2 if stateful else 1):
        if STATE_LOST_UNDER_MIXED_POLICY and mixed:
            reset_states(reference_model)
        reference, theirs, ours = (forward_and_gradients(model, inputs, probes, None)
                                   for model in (reference_model, theirs_model, ours_model))
    if stateful and BACKEND != "jax":  # (stateless_call, on JAX, leaves the state variables as they were)
        lost = not any(np.any(keras.ops.convert_to_numpy(s)) for s in theirs_model.layers[-1].states)
        assert lost == (STATE_LOST_UNDER_MIXED_POLICY and mixed)
    names = result_names(inputs, theirs_model)
    assert len(names) == len(ours) == len(theirs) == len(reference)
    assert dtypes(ours) == dtypes(theirs) and set(dtypes(ours[:3])) == {dtype}
    assert {w.dtype for w in ours_model.weights} == {"float32" if mixed else dtype}
    eps = EPS[dtype]
    errors = {}  # in eps: (drop-in vs float32, Keras vs float32, drop-in vs Keras)
    for n, mine, keras_own, exact in zip(names, ours, theirs, reference):
        mine, keras_own = mine.astype("float32"), keras_own.astype("float32")
        errors[n] = tuple(relative_error(a, b) / eps for a, b in [(mine, exact), (keras_own, exact), (mine, keras_own)])
    worst = [max(errors, key=lambda n: errors[n][i]) for i in range(3)]
    weight_gradients = [errors[f"d{w.name}"][0] * eps for w in theirs_model.trainable_weights]
    print(f"{BACKEND} {policy} {name}: vs float32: drop-in {errors[worst[0]][0]:.3f} eps ({worst[0]}), "
          f"Keras {errors[worst[1]][1]:.3f} eps ({worst[1]}); apart {errors[worst[2]][2]:.3f} eps ({worst[2]}); "
          f"drop-in's weight gradients {max(weight_gradients):.1e}")
    for n, (mine, keras_own, apart) in errors.items():
        assert mine <= 1 and mine <= max(keras_own, 0.5) and apart <= 3, f"{n}: {errors[n]}"
    # Under a mixed policy the weight gradients are float32's, from the float32 weights (but for
    # a stateful layer's second call, which starts from its state rounded to 16 bits).
    if mixed and not stateful:
        assert max(weight_gradients) <= TOLERANCE["float32"], weight_gradients
    assert not fallback_warnings()
    assert fused_calls

def classifier(layer_class, x, **options):
    """Masking, LSTM(16) and Dense(4, softmax), compiled with Adam, for batches like ``x``."""
    model = keras.Sequential([
        keras.Input(batch_shape=x.shape, dtype=x.dtype),
        keras.layers.Masking(0.0),
        layer_class(16, **options),
        keras.layers.Dense(4, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="categorical_crossentropy")
    return model


def train(model, batches):
    """The loss at each training step; a stateful model's state is reset every 5 steps."""
    losses = []
    for step, (x, y) in enumerate(batches):
        losses.append(float(model.train_on_batch(x, y)))
        if step % 5 == 4:
            reset_states(model)
    return np.array(losses)


def training_batches(masked=False, integers=False):
    """20 batches (x [8, 5, 3], y [8, 4]) of a learnable classification, the same in every test."""
    rng = np.random.default_rng(20)
    batches = []
    for _ in range(20):
        if integers:  # in [-1, 1]: with [-2, 2], float32 round-off alone (as floats too) passes LOSS_TOLERANCE
            x = rng.integers(-1, 2, (8, 5, 3), dtype="int32")
        else:
            x = rng.standard_normal((8, 5, 3)).astype("float32")
        if masked:  # every sample padded to its own length, left or right
            lengths = rng.integers(1, 6, size=8)
            steps = np.arange(5)
            x *= np.where(rng.random((8, 1)) < 0.5, steps < lengths[:, None], steps >= 5 - lengths[:, None])[..., None]
        y = keras.utils.to_categorical(2 * (x[:, :, 0].sum(1) > 0) + (x[:, :, 1].sum(1) > 0), 4)
        batches.append((x, y))
    return batches


@pytest.mark.parametrize("options", [dict(), dict(stateful=True), dict(mask=True), dict(dropout=0.3, seed=5),
                                     dict(integers=True)],
                         ids=["plain", "stateful", "masked", "dropout", "integers"])
def test_training_for_20_steps_matches_keras(options, fused_calls):
    options = dict(options)
    # integers: int32 data into an int32 Input, as Keras accepts
    batches = training_batches(options.pop("mask", False), options.pop("integers", False))
    theirs, ours = (classifier(layer_class, batches[0][0], **options) for layer_class in (keras.layers.LSTM, LSTM))
    ours.set_weights(theirs.get_weights())
    theirs_loss, ours_loss = train(theirs, batches), train(ours, batches)
    loss_error = float(np.abs(ours_loss / theirs_loss - 1).max())
    weight_error = max(checked_error(m, r) for m, r in zip(ours.get_weights(), theirs.get_weights()))
    print(f"{BACKEND} training {options}: loss {loss_error:.1e}, weights {weight_error:.1e}")
    assert loss_error <= LOSS_TOLERANCE and weight_error <= WEIGHT_TOLERANCE
    assert theirs_loss[-5:].mean() < theirs_loss[:5].mean()  # it learned something
    assert fused_calls


# In eps of the compute dtype, measured on TensorFlow, PyTorch and JAX (CPU): the loss within 0.20
# eps of float32's at every step (Keras's layer 0.43 eps; the two 0.24 eps apart), the Dense layer
# and the loss, in 16 bits in both models, making most of it; the weights after 20 steps within
# 1.22 eps of float32's (Keras's layer 2.71 eps), nearer than Keras's layer's in every run.
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_training_for_20_steps_tracks_float32(policy, fused_calls, fallback_warnings):
    batches = training_batches(masked=True)
    x = batches[0][0]
    reference = classifier(keras.layers.LSTM, x)
    keras.mixed_precision.set_global_policy(policy)
    try:
        theirs, ours = (classifier(layer_class, x) for layer_class in (keras.layers.LSTM, LSTM))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for model in (theirs, ours):
        model.set_weights(reference.get_weights())
    reference_loss, theirs_loss, ours_loss = (train(model, batches) for model in (reference, theirs, ours))
    apart = float(np.abs(ours_loss / theirs_loss - 1).max())
    mine, keras_own = (float(np.abs(loss / reference_loss - 1).max()) for loss in (ours_loss, theirs_loss))
    weights = [max(relative_error(m, r) for m, r in zip(model.get_weights(), reference.get_weights()))
               for model in (ours, theirs)]
    eps = EPS[POLICIES_16_BITS[policy]]
    print(f"{BACKEND} training {policy}: loss vs float32: drop-in {mine / eps:.3f} eps, Keras {keras_own / eps:.3f} eps; "
          f"apart {apart / eps:.3f} eps; weights vs float32: drop-in {weights[0] / eps:.3f} eps, Keras {weights[1] / eps:.3f} eps")
    assert mine <= 0.5 * eps and apart <= 0.5 * eps
    assert weights[0] <= min(weights[1], 2 * eps)
    assert ours_loss[-5:].mean() < ours_loss[:5].mean()  # it learned something
    assert isinstance(ours.optimizer, keras.mixed_precision.LossScaleOptimizer) == (policy == "mixed_float16")
    assert ours.layers[1].compute_dtype == POLICIES_16_BITS[policy]
    assert {w.dtype for w in ours.weights} == {"float32"}
    assert not fallback_warnings()
    assert fused_calls


def outcome(layer, x, training):
    """The layer's output as a NumPy array, or the type and message of the error it raised."""
    try:
        return keras.ops.convert_to_numpy(layer(x, training=training))
    except Exception as e:  # compared with Keras's own layer's outcome
        return f"{type(e).__name__}: {e}"


# Keras's LSTM computes integer and boolean sequences in its compute dtype. With dropout in
# training it refuses them on TensorFlow and JAX (its dropout needs a float) before the loop
# that the drop-in replaces, so both layers raise the same error there.
INTEGER_INPUTS = {
    "int32": dict(dtype="int32"),
    "int64_float64": dict(dtype="int64", layer_dtype="float64"),
    "bool": dict(dtype="bool"),
    "int64_dropout": dict(dtype="int64", dropout=0.4, seed=3, training=True),
    "int32_float64_dropout": dict(dtype="int32", layer_dtype="float64", dropout=0.4, seed=3, training=True),
}


@pytest.mark.parametrize("name", INTEGER_INPUTS)
def test_integer_and_boolean_inputs_give_keras_outputs(name, fused_calls):
    options = dict(INTEGER_INPUTS[name])
    x = np.random.default_rng(5).integers(-3, 4, SHAPE).astype(options.pop("dtype"))
    layer_dtype, training = options.pop("layer_dtype", "float32"), options.pop("training", False)
    theirs, ours = (layer_class(UNITS, return_sequences=True, dtype=layer_dtype, **options)
                    for layer_class in (keras.layers.LSTM, LSTM))
    theirs.build(SHAPE)
    ours.build(SHAPE)
    ours.set_weights(theirs.get_weights())
    expected, result = outcome(theirs, x, training), outcome(ours, x, training)
    assert isinstance(expected, str) == (training and BACKEND != "torch"), expected
    if isinstance(expected, str):  # Keras's own error, raised before the loop
        assert result == expected
    else:
        error = checked_error(result, expected)
        print(f"{BACKEND} {name} inputs: {error:.1e}")
        assert error <= TOLERANCE[expected.dtype.name]
        assert fused_calls


@pytest.mark.parametrize("argument, options, training", [
    ("recurrent_dropout", dict(recurrent_dropout=0.5, seed=1), True),
    ("unroll", dict(unroll=True), False),
    ("activation", dict(activation="elu"), False),
    ("recurrent_activation", dict(recurrent_activation=lambda z: keras.ops.clip(0.2 * z + 0.5, 0.0, 1.0)), False),
    # Keras 3.15's cuDNN attempt breaks on implementation=1 with dropout: use_cudnn=False avoids it.
    ("implementation", dict(implementation=1, dropout=0.5, seed=1, use_cudnn=False), True),
    ("use_cudnn", dict(use_cudnn=True), False),  # without cuDNN, Keras's error, as Keras raises it
    # An integer compute dtype: Keras's error, raised in its loop. (PyTorch cannot create the
    # integer variables of such a layer, for Keras's layer as for the drop-in.)
    *([("dtype", dict(dtype="int32", kernel_initializer="zeros", recurrent_initializer="zeros"), False)]
      if BACKEND != "torch" else []),
])
def test_what_fastlstm_lacks_falls_back_to_keras_with_one_warning(argument, options, training, fused_calls,
                                                                    fallback_warnings):
    x = np.random.default_rng(1).standard_normal((4, 5, 3)).astype("float32")
    theirs, ours = keras.layers.LSTM(6, **options), LSTM(6, **options)
    theirs.build(x.shape)
    ours.build(x.shape)
    ours.set_weights(theirs.get_weights())
    expected = [outcome(theirs, x, training) for _ in range(2)]
    results = [outcome(ours, x, training) for _ in range(2)]  # the second draws new dropout masks
    messages = fallback_warnings()
    assert len(messages) == 1  # once per process
    assert messages[0].startswith(f"fastlstm.keras.LSTM: fastlstm does not implement {argument}=")
    assert "keras.layers.LSTM's own implementation" in messages[0]
    np.testing.assert_equal(results, expected)
    assert not fused_calls


def test_config_names_and_weights_are_keras_own():
    options = dict(units=5, activation="relu", recurrent_activation="hard_sigmoid", use_bias=False,
                   unit_forget_bias=False, kernel_regularizer="l2", dropout=0.1, recurrent_dropout=0.2, seed=3,
                   return_sequences=True, return_state=True, go_backwards=True, stateful=True, unroll=False,
                   zero_output_for_mask=True, implementation=1, use_cudnn=False)
    keras.utils.clear_session()
    theirs = keras.layers.LSTM(**options)
    theirs.build((2, 3, 4))
    keras.utils.clear_session()
    ours = LSTM(**options)
    ours.build((2, 3, 4))
    assert isinstance(ours, keras.layers.LSTM) and ours.name == theirs.name == "lstm"
    assert ours.get_config() == theirs.get_config()
    assert [w.path for w in ours.weights] == [w.path for w in theirs.weights]
    assert [w.shape for w in ours.weights] == [w.shape for w in theirs.weights]
    assert type(LSTM.from_config(ours.get_config())) is LSTM
    assert keras.saving.get_registered_name(LSTM) == "fastlstm>LSTM"


def test_saved_models_and_weights_move_between_the_two_layers(tmp_path, monkeypatch):
    x = np.random.default_rng(2).standard_normal((3, 4, 2)).astype("float32")

    def model(layer_class):
        return keras.Sequential([keras.Input((4, 2)), layer_class(3), keras.layers.Dense(2)])

    ours, theirs = model(LSTM), model(keras.layers.LSTM)
    ours.save(tmp_path / "ours.keras")
    theirs.save(tmp_path / "theirs.keras")
    # A Keras model's file into the same model with the import swapped:
    swapped = model(LSTM)
    swapped.load_weights(tmp_path / "theirs.keras")
    # The drop-in's file: as it is where fastlstm.keras was imported, and in a plain Keras that never
    # imported it with custom_objects.
    loaded = keras.saving.load_model(tmp_path / "ours.keras")
    monkeypatch.delitem(keras.saving.get_custom_objects(), "fastlstm>LSTM")
    plain = keras.saving.load_model(tmp_path / "ours.keras", custom_objects={"fastlstm>LSTM": keras.layers.LSTM})
    for copy, original, layer_class in [(swapped, theirs, LSTM), (loaded, ours, LSTM), (plain, ours, keras.layers.LSTM)]:
        assert type(copy.layers[0]) is layer_class
        np.testing.assert_allclose(copy.predict(x, verbose=0), original.predict(x, verbose=0), rtol=0, atol=1e-6)


def test_reset_states_resets_every_stateful_layer_of_a_model():
    inner = keras.Sequential([keras.Input(batch_shape=(5, 3, 2)), LSTM(4, stateful=True)])
    x = keras.Input(batch_shape=(5, 3, 2))
    model = keras.Model(x, keras.layers.Dense(2)(inner(x)))  # the stateful layer inside a nested model
    data = np.random.default_rng(3).standard_normal((5, 3, 2)).astype("float32")
    # Direct calls: Keras 3 carries a stateful layer's state through predict() on TensorFlow and
    # PyTorch, not on JAX, with its own LSTM as with this one.
    first, carried = (keras.ops.convert_to_numpy(model(data)) for _ in range(2))
    reset_states(model)
    again = keras.ops.convert_to_numpy(model(data))
    assert np.abs(carried - first).max() > 1e-3  # the state carried over between batches
    np.testing.assert_array_equal(again, first)


def test_with_batch_size_copies_a_stateful_model_for_one_sample_at_a_time():
    model = keras.Sequential([keras.Input(batch_shape=(5, 3, 2)), LSTM(4, stateful=True), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(4).standard_normal((5, 3, 2)).astype("float32")
    model.train_on_batch(x, np.ones((5, 2), "float32"))
    reset_states(model)
    expected = model.predict_on_batch(x)
    copy = with_batch_size(model, 1)
    assert copy.inputs[0].shape == (1, 3, 2) and copy.compiled
    assert [layer.name for layer in copy.layers] == [layer.name for layer in model.layers]
    assert type(copy.layers[0]) is LSTM
    for mine, original in zip(copy.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(mine, original)
    for i in range(5):
        reset_states(copy)
        np.testing.assert_allclose(copy.predict_on_batch(x[i:i + 1]), expected[i:i + 1], rtol=0, atol=1e-6)


def test_keras_compiles_with_xla_only_where_the_layer_supports_it(fused_calls):
    model = keras.Sequential([keras.Input((3, 2)), LSTM(4), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", jit_compile=True)  # Keras drops it where a layer cannot
    model.fit(np.ones((4, 3, 2), "float32"), np.ones((4, 1), "float32"), verbose=0)
    # JAX runs the layer's callback under jax.jit; tf.numpy_function has no XLA form, and
    # torch.compile would break its graph at the callback.
    assert model.jit_compile == (BACKEND == "jax")
    assert fused_calls
