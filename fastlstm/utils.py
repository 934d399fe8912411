"""Data helpers with ``keras.utils``'s names, defaults and semantics, in NumPy.

- :func:`to_categorical`: integer labels to one-hot rows.
- :func:`pad_sequences`: a list of variable-length sequences to one ``[samples, maxlen, ...]`` array.
- :func:`set_random_seed`: seeds Python's and NumPy's global random state, which every random
  draw of :mod:`fastlstm.nn` (weight initializers, shuffling in ``fit``) takes from.

And for the command line: :func:`usable_cores`, for whatever spreads work over the cores, and
:class:`Progress`, a progress line on a terminal (as ``keras.utils.Progbar``), and
:func:`write_json`, which writes a file whole or not at all.
"""
import contextlib
import json
import math
import os
import random
import sys
import time

import numpy as np


def to_categorical(y, num_classes=None):
    """Converts integer class labels to one-hot rows, as ``keras.utils.to_categorical``.

    Args:
        y: integer labels (any array-like of ints, or of floats with integral values), shape
            ``[...]``; a trailing axis of size 1 is dropped, as Keras drops it.
        num_classes: the number of classes; ``max(y) + 1`` when None.

    Returns:
        A float64 array ``[..., num_classes]`` (Keras 3 returns float64 for NumPy input) with
        a 1 in each label's column.

    Example:

    >>> to_categorical([0, 2, 1])
    array([[1., 0., 0.],
           [0., 0., 1.],
           [0., 1., 0.]])
    """
    labels = np.asarray(y)
    if labels.dtype.kind not in "iuf" or (labels.dtype.kind == "f" and not np.all(labels == np.round(labels))):
        raise ValueError(f"y must hold integer class labels, got dtype {labels.dtype}: {labels.ravel()[:5]}...")
    labels = labels.astype(np.int64)
    shape = labels.shape[:-1] if labels.ndim > 1 and labels.shape[-1] == 1 else labels.shape
    labels = labels.reshape(-1)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    elif not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"y must hold labels in [0, {num_classes}) for num_classes={num_classes}, "
            f"got labels from {labels.min()} to {labels.max()}"
        )
    categorical = np.zeros((labels.size, num_classes))
    categorical[np.arange(labels.size), labels] = 1
    return categorical.reshape(shape + (num_classes,))


def pad_sequences(sequences, maxlen=None, dtype="int32", padding="pre", truncating="pre", value=0.0):
    """Pads (or truncates) sequences to one length, as ``keras.utils.pad_sequences``.

    Args:
        sequences: a list of sequences; each a list or array of steps, a step a number or an
            array of one shape shared by every sequence.
        maxlen: the length to pad or truncate to; the longest sequence's length when None.
        dtype: the dtype of the result.
        padding: 'pre' (default) puts the padding before each sequence, 'post' after it.
        truncating: 'pre' (default) drops the first steps of a longer sequence, 'post' its last.
        value: the padding value.

    Returns:
        An array ``[len(sequences), maxlen, *step_shape]``.

    Example:

    >>> pad_sequences([[1, 2, 3], [4]], maxlen=2)
    array([[2, 3],
           [0, 4]], dtype=int32)
    """
    for name, choice in (("padding", padding), ("truncating", truncating)):
        if choice not in ("pre", "post"):
            raise ValueError(f"{name} must be 'pre' or 'post', got {choice!r}")
    if maxlen is not None and (not isinstance(maxlen, (int, np.integer)) or maxlen < 0):
        raise ValueError(f"maxlen must be a non-negative integer or None, got {maxlen!r}")
    try:
        arrays = [np.asarray(s, dtype=dtype) for s in sequences]
    except TypeError as e:
        raise ValueError(f"sequences must be a list of sequences, got {type(sequences).__name__}") from e
    for i, a in enumerate(arrays):
        if a.ndim == 0:
            raise ValueError(f"sequences must be a list of sequences, but sequences[{i}] is a scalar: {a}")
    step_shape = next((a.shape[1:] for a in arrays if len(a)), ())
    if maxlen is None:
        maxlen = max((len(a) for a in arrays), default=0)

    padded = np.full((len(arrays), maxlen) + step_shape, value, dtype=dtype)
    for i, a in enumerate(arrays):
        if a.shape[1:] != step_shape and len(a):
            raise ValueError(
                f"every step must have the shape of the first non-empty sequence's steps, "
                f"{step_shape}, but sequences[{i}] has steps of shape {a.shape[1:]}"
            )
        kept = a[max(len(a) - maxlen, 0):] if truncating == "pre" else a[:maxlen]
        if padding == "pre":
            padded[i, maxlen - len(kept):] = kept
        else:
            padded[i, :len(kept)] = kept
    return padded


def set_random_seed(seed):
    """Seeds Python's ``random`` and NumPy's global random state, as ``keras.utils.set_random_seed``.

    Every random draw of :mod:`fastlstm.nn` (initial weights, the shuffling in ``fit``) comes
    from NumPy's global state, so the same seed gives the same model and the same training run;
    ``numpy.random.seed(seed)`` works as well.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r} of type {type(seed).__name__}")
    random.seed(int(seed))
    np.random.seed(int(seed))


def usable_cores():
    """How many cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on macOS and Windows
        return os.cpu_count() or 1


class Progress:
    """An in-place 'label: epoch i/n' line on a terminal (``counts`` words the count); silent when
    the output is not one."""

    def __init__(self, label, stream=sys.stderr, counts="epoch {}/{}"):
        self.label, self.stream, self.counts = label, stream, counts
        self.enabled = stream.isatty()
        self.shown_at = 0.0

    def __call__(self, done, total):
        now = time.monotonic()
        if self.enabled and (now - self.shown_at > 0.1 or done == total):
            self.stream.write(f"\r{self.label}: {self.counts.format(done, total)}\033[K")
            self.stream.flush()
            self.shown_at = now

    def close(self):
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


def write_json(path, document):
    """Writes ``document`` to ``path`` as JSON whole or not at all: into a file beside it first,
    renamed over ``path`` once complete, so that no failure or interruption leaves a partial file.
    NaN and infinite numbers (a diverged run's loss) are written as null: strict JSON has none."""
    partial = f"{path}.{os.getpid()}.partial"
    try:
        with open(partial, "w") as f:
            json.dump(_finite_or_null(document), f, indent=1, allow_nan=False)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
        raise


def _finite_or_null(value):
    """``value`` (dicts, lists and tuples of JSON values) with each NaN or infinite float as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value
