"""What every backend does around its recurrence, written once against an array module ``xp``
(NumPy or CuPy): the input projection over all time steps before it, and the weight gradients
as one whole-sequence matrix product after it."""


def in_processing_order(xp, x, go_backwards):
    """``x`` [batch, time, ...] as a contiguous array in processing order: reversed in time for
    go_backwards."""
    return xp.ascontiguousarray(x[:, ::-1] if go_backwards else x)


def owned_in_processing_order(xp, x, go_backwards):
    """:func:`in_processing_order`, always a new array, never a view of the caller's ``x``: for a
    backend to save for its backward pass, as the caller may change ``x`` after the forward."""
    ordered = x[:, ::-1] if go_backwards else x
    # ascontiguousarray returns its argument where it is contiguous: x, or over one step its reversal
    return ordered.copy() if ordered.flags.c_contiguous else xp.ascontiguousarray(ordered)


def start(xp, x, kernel, bias, h0, c0, units, go_backwards):
    """The inputs in processing order and the arrays the recurrence fills.

    Returns ``x`` [batch, time, input_dim] (contiguous, reversed in time for go_backwards; a
    copy, never the caller's array),
    ``zx = x @ kernel + bias`` [batch, time, 4*units], and empty ``h``, ``c``
    [batch, time + 1, units] holding h0, c0 at index 0, and ``gates`` [batch, time, 4*units].
    """
    x = owned_in_processing_order(xp, x, go_backwards)
    batch, time, input_dim = x.shape
    zx = xp.matmul(x.reshape(batch * time, input_dim), kernel).reshape(batch, time, 4 * units)
    if bias is not None:
        zx += bias
    return x, zx, *states(xp, h0, c0, time), xp.empty_like(zx)


def states(xp, h0, c0, time):
    """Empty ``h``, ``c`` [batch, time + 1, units] holding h0, c0 [batch, units] at time index 0."""
    h = xp.empty((h0.shape[0], time + 1, h0.shape[1]), h0.dtype)
    c = xp.empty(h.shape, h.dtype)
    h[:, 0], c[:, 0] = h0, c0
    return h, c


def step_inputs(xp, x, h):
    """``[x_t, h_{t-1}]`` of every sample and step, ``[batch, time, input_dim + units]``: the rows
    that multiply ``[kernel; recurrent_kernel]``, from ``x`` and ``h`` as :func:`start` made them."""
    batch, time, input_dim = x.shape
    inputs = xp.empty((batch, time, input_dim + h.shape[2]), x.dtype)
    inputs[:, :, :input_dim] = x
    inputs[:, :, input_dim:] = h[:, :time]
    return inputs


def weight_gradients(xp, inputs, kernel, dz, has_bias):
    """(dkernel, drecurrent_kernel, dbias) from the pre-activation gradients ``dz`` [batch, time,
    4*units] of the whole sequence and the forward pass's ``inputs`` [batch, time, input_dim +
    units], the rows [x_t, h_{t-1}] that :func:`step_inputs` makes, in dz's time order: the
    gradients of kernel and recurrent_kernel as one product, ``inputs^T @ dz``. Rows that end in a
    1 (the GPU kernels' ``[batch, time, input_dim + units + 1]``) make dbias that product's last row
    rather than a sum of its own."""
    batch, time, _ = dz.shape
    input_dim = kernel.shape[0]
    dz_flat = dz.reshape(batch * time, dz.shape[2])
    dweights = xp.matmul(inputs.reshape(batch * time, inputs.shape[2]).T, dz_flat)
    units = dz.shape[2] // 4
    if not has_bias:
        dbias = None
    else:
        dbias = dweights[input_dim + units] if inputs.shape[2] > input_dim + units else dz_flat.sum(axis=0)
    return dweights[:input_dim], dweights[input_dim:input_dim + units], dbias


def input_gradient(xp, dz, kernel, go_backwards):
    """dx [batch, time, input_dim] = ``dz @ kernel.T`` from the pre-activation gradients ``dz``
    [batch, time, 4*units] of the whole sequence, in dz's time order, reversed for go_backwards."""
    batch, time, _ = dz.shape
    dx = xp.matmul(dz.reshape(batch * time, dz.shape[2]), kernel.T).reshape(batch, time, kernel.shape[0])
    return in_processing_order(xp, dx, go_backwards)
