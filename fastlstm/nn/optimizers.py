"""Optimizers with Keras 3's update rules, updating NumPy arrays in place."""
import functools
import numbers

import numpy as np

from fastlstm.ops import AdamState


class Adam:
    """Adam, with exactly Keras 3's update rule (``keras.optimizers.Adam``, amsgrad off).

    At step ``t`` (1, 2, ...), for every variable ``w`` with gradient ``g``, in ``w``'s dtype::

        alpha = learning_rate * sqrt(1 - beta_2**t) / (1 - beta_1**t)
        m += (g - m) * (1 - beta_1)
        v += (g * g - v) * (1 - beta_2)
        w -= m * alpha / (sqrt(v) + epsilon)

    Note that ``epsilon`` is added to the uncorrected ``sqrt(v)`` (the "epsilon hat" of the
    Adam paper), as Keras and TensorFlow do.

    Args:
        learning_rate: the step size (default 0.001).
        beta_1: the decay rate of the first-moment estimate ``m`` (default 0.9).
        beta_2: the decay rate of the second-moment estimate ``v`` (default 0.999).
        epsilon: a small constant for numerical stability (default 1e-7, as Keras).
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        for name, value, low, high in (
            ("learning_rate", learning_rate, 0.0, np.inf),
            ("beta_1", beta_1, 0.0, 1.0),
            ("beta_2", beta_2, 0.0, 1.0),
            ("epsilon", epsilon, 0.0, np.inf),
        ):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= value < high:
                raise ValueError(f"{name} must be a number in [{low}, {high}), got {value!r}")
        self.learning_rate = float(learning_rate)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.iterations = 0  # steps taken, as Keras's optimizer.iterations
        self._slots = None  # per variable: (m, v, scratch, scratch)

    def apply_gradients(self, grads_and_vars):
        """One Adam step: updates each variable of ``grads_and_vars``, a list of
        ``(gradient, variable)`` array pairs, in place. Every call must pass the same variables
        in the same order (the moment estimates are kept per position)."""
        pairs = list(grads_and_vars)
        slots = self._slots_for(pairs)
        self.iterations += 1
        for (g, w), (m, v, t, u) in zip(pairs, slots):
            dtype = w.dtype.type
            learning_rate, beta_1, beta_2, epsilon, one_minus_beta_1, one_minus_beta_2 = self.constants(dtype)
            step = dtype(self.iterations)
            alpha = learning_rate * np.sqrt(1 - beta_2 ** step) / (1 - beta_1 ** step)
            # In place, in the order Keras computes it, so the results round the same way.
            np.subtract(g, m, out=t)
            t *= one_minus_beta_1
            m += t
            np.multiply(g, g, out=t)
            t -= v
            t *= one_minus_beta_2
            v += t
            np.sqrt(v, out=t)
            t += epsilon
            np.multiply(m, alpha, out=u)
            u /= t
            w -= u

    def state(self, variable, gradient):
        """Everything a fused training pass needs to take Adam steps on the one array ``variable``
        with ``gradient``: an :class:`~fastlstm.ops.AdamState` with the moment estimates (zeros
        before the first step), which the pass updates in place; it then adds its steps to
        ``iterations``. The same variable as :meth:`apply_gradients` takes, or it refuses."""
        (m, v, _, _), = self._slots_for([(gradient, variable)])
        return AdamState(variable, gradient, m, v, self.constants(variable.dtype.type), self.iterations)

    def constants(self, dtype):
        """``(learning_rate, beta_1, beta_2, epsilon, 1 - beta_1, 1 - beta_2)`` rounded to ``dtype``."""
        return _rounded_constants(dtype, self.learning_rate, self.beta_1, self.beta_2, self.epsilon)

    def _slots_for(self, pairs):
        """Per variable (m, v, scratch, scratch), created on first use; refuses other variables."""
        if self._slots is None:
            self._slots = [tuple(np.zeros_like(w) for _ in range(4)) for _, w in pairs]
        if len(pairs) != len(self._slots) or any(w.shape != s[0].shape for (_, w), s in zip(pairs, self._slots)):
            raise ValueError(
                f"this Adam instance was built for variables of shapes {[s[0].shape for s in self._slots]}, "
                f"got {[w.shape for _, w in pairs]}: use one optimizer instance per model"
            )
        return self._slots


# Rounded once per dtype and values: every step, and every epoch of a fused training pass, asks for
# them, a cost that shows at the small shapes (bench/test_experiments.py's one epoch of experiment 4).
@functools.lru_cache(maxsize=16)
def _rounded_constants(dtype, learning_rate, beta_1, beta_2, epsilon):
    return tuple(dtype(value) for value in (learning_rate, beta_1, beta_2, epsilon, 1 - beta_1, 1 - beta_2))
