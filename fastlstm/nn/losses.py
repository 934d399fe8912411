"""Losses, computed as Keras 3 with the TensorFlow backend computes them.

A loss here works on the logits of the model's softmax output: ``__call__(y_true, logits)``
gives the loss and ``gradient(y_true, probs)`` its gradient with respect to the logits, the
softmax and the loss differentiated together.
"""
import numpy as np


class CategoricalCrossentropy:
    """Categorical cross-entropy of a softmax output, averaged over the batch.

    Keras 3 (TensorFlow backend) takes the logits behind a softmax output and computes
    ``softmax_cross_entropy_with_logits``: per sample ``-sum(y_true * log_softmax(logits))``,
    in the numerically stable form ``sum(y_true * (logsumexp(z) - z))`` with ``z`` the logits
    less their maximum. The reduction is Keras's default, the sum over samples divided by their
    count (samples times time steps for a ``[batch, time, classes]`` output).
    """

    name = "categorical_crossentropy"

    def __call__(self, y_true, logits):
        """The mean loss, a Python float, of ``y_true`` and ``logits`` ``[batch, classes]``
        (or ``[batch, time, classes]``)."""
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_sum_exp = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        per_sample = (y_true * (log_sum_exp - shifted)).sum(axis=-1)
        return float(per_sample.sum() / per_sample.size)

    def gradient(self, y_true, probs):
        """The gradient of the mean loss with respect to the logits, ``(probs - y_true) / count``,
        where ``probs`` is the softmax of the logits; shaped like ``probs``."""
        count = probs.size // probs.shape[-1]
        return (probs - y_true) * probs.dtype.type(1 / count)


LOSSES = {CategoricalCrossentropy.name: CategoricalCrossentropy}


def get(identifier):
    """The loss named ``identifier`` (a key of LOSSES), or ``identifier`` if it is a loss instance."""
    if isinstance(identifier, CategoricalCrossentropy):
        return identifier
    if not isinstance(identifier, str) or identifier not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)} or a loss instance, got {identifier!r}")
    return LOSSES[identifier]()
