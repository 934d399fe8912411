"""The fused training pass of the ``numba_cpu`` backend: :func:`train_epoch`, a pass of an LSTM +
Dense(softmax) model over its batches, each batch's forward, categorical cross-entropy, backward
and Adam update in the same compiled call; the Dense takes the LSTM's last output, or every step's
output (return_sequences).
"""
import math

import numpy as np
from numba import njit

from .cpu_arithmetic import FLAGS, add_to, copy_to, exp
from .cpu_lstm import add_weight_gradients, backward_sequence, forward_sequence, project
from .cpu_matmul import add_product, matvec


@njit(inline="always")
def _argmax(a):
    """np.argmax of the vector a (the first maximum, or the first NaN), as a loop: Numba's
    np.argmax and max take about a second to compile."""
    best = 0
    for j in range(1, a.size):
        if a[j] > a[best] or (a[j] != a[j] and a[best] == a[best]):
            best = j
    return best


@njit(inline="always")
def _softmax_cross_entropy(logits, target, exps):
    """Turns logits [classes] into the softmax's probabilities in place, using exps [classes] as
    scratch; returns the categorical cross-entropy ``sum(target * (logsumexp(z) - z))`` with z
    the logits less their maximum, as Keras computes it (and fastlstm.nn.CategoricalCrossentropy)."""
    T = logits.dtype.type
    logits -= logits[_argmax(logits)]
    for j in range(logits.size):
        exps[j] = exp(logits[j], T)
    total = T(0)
    for j in range(logits.size):
        total += exps[j]
    log_sum = T(math.log(total))
    loss = T(0)
    for j in range(logits.size):
        loss += target[j] * (log_sum - logits[j])
    for j in range(logits.size):
        logits[j] = exps[j] / total
    return loss


@njit(inline="always")
def _add_outer(a, b, out):
    """out += outer(a, b) for a [n], b [k] and out [n, k]."""
    for i in range(a.size):
        ai = a[i]
        for j in range(b.size):
            out[i, j] += ai * b[j]


@njit(inline="always")
def _adam(w, g, m, v, step, adam):
    """Adam step number ``step`` on the flat w with gradient g and moments m, v, in Keras 3's
    order of operations (as fastlstm.nn.Adam); adam = (learning_rate, beta_1, beta_2, epsilon,
    1 - beta_1, 1 - beta_2), each rounded to w's dtype."""
    T = w.dtype.type
    learning_rate, beta_1, beta_2, epsilon, one_minus_beta_1, one_minus_beta_2 = adam
    t = T(step)
    alpha = learning_rate * np.sqrt(T(1) - beta_2 ** t) / (T(1) - beta_1 ** t)
    for i in range(w.size):
        m[i] += (g[i] - m[i]) * one_minus_beta_1
        v[i] += (g[i] * g[i] - v[i]) * one_minus_beta_2
        w[i] -= m[i] * alpha / (np.sqrt(v[i]) + epsilon)


@njit(inline="always")
def _carve(scratch, offset, shape):
    """A C-contiguous array of ``shape`` from the flat scratch at offset, and the offset after it."""
    size = 1
    for n in shape:
        size *= n
    return scratch[offset:offset + size].reshape(shape), offset + size


@njit(**FLAGS)
def train_epoch(x, y, batch_size, lstm, dense, lstm_grads, dense_grads, flat, adam, iterations, state, options):
    """Trains an LSTM + Dense(softmax) model with categorical cross-entropy and Adam on the
    batches of x [samples, time, features] and y [samples, steps, classes], in order: per batch
    the forward pass, the loss, the backward pass and one Adam step. y holds the targets of the
    LSTM's last ``steps`` outputs (in processing order, as cpu_lstm.forward leaves them): steps 1,
    the last output alone (an LSTM without return_sequences); steps = time, every output (with
    return_sequences, the Dense applied at each step). The loss is averaged over rows * steps.

    lstm: (kernel, recurrent_kernel, bias) and dense: (kernel, bias), the weights (a bias of
    size 0 for none); lstm_grads and dense_grads shaped alike; all views into flat = (weights,
    gradients, m, v): the model's flat buffers and Adam's moments, updated in place. adam:
    Adam's constants as :func:`_adam` takes them; iterations: the Adam steps taken before. state:
    (h, c) [batch_size, units], the initial state of every batch for a stateful model, which
    carries it on from batch to batch (zeros are used otherwise); options: (stateful,
    go_backwards, activation, recurrent_activation).

    Returns (the sum over batches of each batch's mean loss times its size, in float64, as
    fastlstm.nn sums them; the number of outputs whose most probable class is the target's).

    Call it with subnormal numbers (below 1.2e-38 in float32) flushed to zero
    (``cpu_arithmetic.exchange_mxcsr`` with FLUSH_SUBNORMALS), as TensorFlow does on the CPU:
    saturated gates make them by the thousand late in training, and each is slow.
    """
    stateful, go_backwards, activation, recurrent_activation = options
    zero_state = not stateful  # each batch starts from zeros
    kernel, recurrent_kernel, bias = lstm
    dense_kernel, dense_bias = dense
    dkernel, drecurrent_kernel, dbias = lstm_grads
    ddense_kernel, ddense_bias = dense_grads
    samples, time, _ = x.shape
    steps = y.shape[1]
    units, classes = dense_kernel.shape
    T = x.dtype.type
    if stateful and (state[0].shape != (batch_size, units) or state[1].shape != (batch_size, units)
                     or samples % batch_size):
        # A fixed message: formatting the shapes into it would take seconds to compile.
        raise ValueError("state: expected h and c of shape [batch_size, units], and whole batches")
    if steps != 1 and steps != time:
        raise ValueError("y: expected [samples, 1, classes] or [samples, time, classes]")
    # With every step's output in the loss, its gradients enter backward_sequence as dy; with the
    # last one's alone, as the gradient w.r.t. the final state dh (when time is 1 the two agree).
    every_step = steps == time
    dy_steps = time if every_step else 0
    first = time - steps + 1  # the index in h of the first output in the loss
    scratch = np.empty(batch_size * (time * 9 * units + (time + 1) * 2 * units + steps * classes + 2 * units
                                     + dy_steps * units), x.dtype)
    exps = np.empty(classes, x.dtype)
    recurrent_part = np.empty(4 * units, x.dtype)
    total_loss, correct = 0.0, 0
    for start in range(0, samples, batch_size):
        rows = min(batch_size, samples - start)
        gates, offset = _carve(scratch, 0, (rows, time, 4 * units))
        dz, offset = _carve(scratch, offset, (rows, time, 4 * units))
        h, offset = _carve(scratch, offset, (rows, time + 1, units))
        c, offset = _carve(scratch, offset, (rows, time + 1, units))
        act_c, offset = _carve(scratch, offset, (rows, time, units))
        probs, offset = _carve(scratch, offset, (rows, steps, classes))
        dh, offset = _carve(scratch, offset, (rows, units))
        dc, offset = _carve(scratch, offset, (rows, units))
        dy, offset = _carve(scratch, offset, (rows, dy_steps, units))
        # Forward: the input projection, then the recurrence from the state.
        inputs = x[start:start + rows, ::-1] if go_backwards else x[start:start + rows, ::1]  # processing order
        project(inputs, kernel, bias, gates)
        if stateful:
            copy_to(h[:, 0], state[0])
            copy_to(c[:, 0], state[1])
        else:
            h[:, 0] = 0
            c[:, 0] = 0
        forward_sequence(gates, recurrent_kernel, h, c, act_c, activation, recurrent_activation, zero_state,
                         recurrent_part)
        if stateful:
            copy_to(state[0], h[:, time])
            copy_to(state[1], c[:, time])
        # Dense, softmax and the loss at each output; probs becomes the gradient w.r.t. the
        # logits, (probs - y) / (rows * steps).
        count = rows * steps
        batch_loss = T(0)
        for b in range(rows):
            for s in range(steps):
                target = y[start + b, s]
                p = probs[b, s]
                p[:] = 0
                add_product(h[b, first + s], dense_kernel, p)
                add_to(p, dense_bias)
                batch_loss += _softmax_cross_entropy(p, target, exps)
                correct += _argmax(p) == _argmax(target)
                for j in range(classes):
                    p[j] = (p[j] - target[j]) * T(1 / count)
        total_loss += float(batch_loss / T(count)) * rows
        # Backward: Dense (its gradients summed over the outputs), the recurrence, then the LSTM's
        # weight gradients.
        ddense_kernel[:] = 0
        ddense_bias[:] = 0
        dc[:] = 0
        dh[:] = 0
        doutputs = dy if every_step else dh.reshape((rows, 1, units))  # the gradients w.r.t. the outputs
        for b in range(rows):
            for s in range(steps):
                _add_outer(h[b, first + s], probs[b, s], ddense_kernel)
                add_to(ddense_bias, probs[b, s])
                matvec(dense_kernel, probs[b, s], doutputs[b, s])
        # The same argument types as cpu_lstm.backward's call (a C-contiguous dy, a bool that is not
        # a literal), so that backward_sequence compiles once for both.
        backward_sequence(gates, c, act_c, recurrent_kernel, dy, dh, dc, dz, activation,
                          recurrent_activation, bool(False))
        dkernel[:] = 0
        drecurrent_kernel[:] = 0
        dbias[:] = 0
        add_weight_gradients(inputs, h, dz, dkernel, drecurrent_kernel, dbias, zero_state)
        iterations += 1
        _adam(flat[0], flat[1], flat[2], flat[3], iterations, adam)
    return total_loss, correct
