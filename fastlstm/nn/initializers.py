"""Weight initializers with Keras 3's definitions.

An initializer is a callable ``(shape, dtype) -> ndarray``. The random ones draw from NumPy's
global random state, so :func:`fastlstm.utils.set_random_seed` (or ``numpy.random.seed``) makes
them reproducible; they follow Keras's formulas but not its random streams.
"""
import math

import numpy as np


def glorot_uniform(shape, dtype="float32"):
    """Uniform on ``[-limit, limit]``, ``limit = sqrt(6 / (fan_in + fan_out))``; for a 2-D
    ``[fan_in, fan_out]`` weight, as Keras 3's ``GlorotUniform``."""
    fan_in, fan_out = (shape[0], shape[-1]) if len(shape) else (1, 1)
    limit = math.sqrt(3.0 / max(1.0, (fan_in + fan_out) / 2.0))
    return np.random.uniform(-limit, limit, shape).astype(dtype)


def orthogonal(shape, dtype="float32", gain=1.0):
    """An orthogonal matrix (orthonormal rows or columns, whichever are fewer) from the QR
    decomposition of a standard normal draw, as Keras 3's ``Orthogonal``."""
    if len(shape) < 2:
        raise ValueError(f"orthogonal needs a weight of at least 2 dimensions, got shape {tuple(shape)}")
    rows, cols = math.prod(shape[:-1]), shape[-1]
    q, r = np.linalg.qr(np.random.standard_normal((max(rows, cols), min(rows, cols))))
    q *= np.sign(np.diag(r))  # makes the decomposition unique, so q is uniformly distributed
    if rows < cols:
        q = q.T
    return (gain * q).reshape(shape).astype(dtype)


def zeros(shape, dtype="float32"):
    return np.zeros(shape, dtype)


def ones(shape, dtype="float32"):
    return np.ones(shape, dtype)


INITIALIZERS = {f.__name__: f for f in (glorot_uniform, orthogonal, zeros, ones)}


def get(identifier, argument):
    """The initializer named ``identifier`` (a key of INITIALIZERS), or ``identifier`` itself if
    it is a callable ``(shape, dtype) -> ndarray``; ``argument`` names it in the error."""
    if callable(identifier):
        return identifier
    if not isinstance(identifier, str) or identifier not in INITIALIZERS:
        raise ValueError(
            f"{argument} must be one of {sorted(INITIALIZERS)} or a callable (shape, dtype) -> array, "
            f"got {identifier!r}"
        )
    return INITIALIZERS[identifier]
