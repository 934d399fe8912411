"""What every backend does around its recurrence, written once against an array module ``xp``
(NumPy or CuPy): the input projection over all time steps before it, and the weight gradients
as whole-sequence matrix products after it."""


def in_processing_order(xp, x, go_backwards):
    """``x`` [batch, time, ...] as a contiguous array in processing order: reversed in time for
    go_backwards."""
    return xp.ascontiguousarray(x[:, ::-1] if go_backwards else x)


def start(xp, x, kernel, bias, h0, c0, units, go_backwards):
    """The inputs in processing order and the arrays the recurrence fills.

    Returns ``x`` [batch, time, input_dim] (contiguous, reversed in time for go_backwards),
    ``zx = x @ kernel + bias`` [batch, time, 4*units], and empty ``h``, ``c``
    [batch, time + 1, units] holding h0, c0 at index 0, and ``gates`` [batch, time, 4*units].
    """
    x = in_processing_order(xp, x, go_backwards)
    batch, time, input_dim = x.shape
    zx = xp.matmul(x.reshape(batch * time, input_dim), kernel).reshape(batch, time, 4 * units)
    if bias is not None:
        zx += bias
    return x, zx, *states(xp, h0, c0, time), xp.empty_like(zx)


def states(xp, h0, c0, time, empty=None):
    """Empty ``h``, ``c`` [batch, time + 1, units] holding h0, c0 [batch, units] at time index 0;
    made by ``empty(shape, dtype)`` (default ``xp.empty``)."""
    empty = empty or xp.empty
    h = empty((h0.shape[0], time + 1, h0.shape[1]), h0.dtype)
    c = empty(h.shape, h.dtype)
    h[:, 0], c[:, 0] = h0, c0
    return h, c


def weight_gradients(xp, x, kernel, h, dz, has_bias, go_backwards, empty=None):
    """(dx, dkernel, drecurrent_kernel, dbias) from the pre-activation gradients ``dz``
    [batch, time, 4*units] of the whole sequence; ``x`` and ``h`` as :func:`start` made them.
    The arrays of the sequence's size (dx, and h without its last step) are made by
    ``empty(shape, dtype)`` (default ``xp.empty``)."""
    empty = empty or xp.empty
    batch, time, input_dim = x.shape
    units = h.shape[2]
    dz_flat = dz.reshape(batch * time, 4 * units)
    dkernel = xp.matmul(x.reshape(batch * time, input_dim).T, dz_flat)
    h_prev = empty((batch * time, units), h.dtype)
    h_prev.reshape(batch, time, units)[...] = h[:, :time]
    drecurrent_kernel = xp.matmul(h_prev.T, dz_flat)
    dbias = dz_flat.sum(axis=0) if has_bias else None
    dx = xp.matmul(dz_flat, kernel.T, out=empty((batch * time, input_dim), x.dtype)).reshape(batch, time, input_dim)
    return in_processing_order(xp, dx, go_backwards), dkernel, drecurrent_kernel, dbias
