"""Per-element cell math and per-step pointwise bodies shared by the Triton
step kernels (rnn_step.py) and sequence kernels (rnn_sequence.py).

This file is the one source of truth for the gate math inside Triton. The
formulas and gate order are those of rnnkernels/reference.py:

    rnn_tanh  h' = tanh(gi + gh)            rnn_relu  h' = relu(gi + gh)
    lstm      i, f, g, o = gi + gh (in that order, H columns each)
              c' = sigmoid(f) * c + sigmoid(i) * tanh(g);  h' = sigmoid(o) * tanh(c')
    gru       r = sigmoid(gi_r + gh_r);  z = sigmoid(gi_z + gh_z)
              n = tanh(gi_n + r * gh_n); h' = (1 - z) * n + z * h

gi = x W_ih^T + b_ih and gh = h W_hh^T + b_hh arrive as separate tiles
(GRU needs gh_n on its own). All math runs in fp32 whatever the storage dtype.

Buffers one step touches (B batch, H hidden, G gates, S saved tiles):
    gi_t, gh_t      (B, G*H)  storage dtype
    h_prev_t        (B, H)    storage dtype: the state entering step t
    c_prev_t        (B, H)    fp32, lstm only
    saved_t         (B, S*H)  fp32 activations for backward:
                              lstm (i, f, g, o), gru (r, z, n, gh_n), rnn (h')
    out_t           (B, H)    zero where the sequence has ended
    dgh_t, dgi_t    (B, G*H)  storage dtype: gradients of the gate
                              pre-activations (dgi_t differs only for gru)
Every tile is (BLOCK_B, BLOCK_H): rows are batch entries, columns hidden
units; `mask` marks the rows < B and columns < H.

The kernels use only builtin tl functions, not the @triton.jit ones of
Triton's standard library (tl.zeros, tl.sigmoid, ...): under TRITON_INTERPRET=1
those are interpreted only if triton itself was imported with the variable
set, which a process that imported torch/triton first cannot promise.
"""
import triton
import triton.language as tl

# Mode codes: the MODE constexpr of every kernel (globals read inside
# @triton.jit functions must be tl.constexpr).
RNN_TANH = tl.constexpr(0)
RNN_RELU = tl.constexpr(1)
LSTM = tl.constexpr(2)
GRU = tl.constexpr(3)
MODE_CODES = {"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3}
NUM_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
NUM_SAVED = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 4}


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # The rational minimax tanh of csrc/cpu/fast_math.h (Eigen's float
    # coefficients): portable (no libdevice, runs in the interpreter) and
    # accurate to 4e-7 relative for every x, where 2 sigmoid(2x) - 1 cancels
    # for small |x| (7.7e-5 at 1e-4). Clamped to its fitted range +-7.905, and
    # exactly +-1 from 9.0109 on, where tanh rounds to 1 in float, so that the
    # derivative 1 - tanh^2 reaches 0 as torch's does. tl.where, not
    # tl.minimum, clamps: a NaN fails both comparisons and stays NaN.
    xc = tl.where(x > 7.90531110763549805, 7.90531110763549805, x)
    xc = tl.where(xc < -7.90531110763549805, -7.90531110763549805, xc)
    z = xc * xc
    p = -5.641676241e-14
    p = p * z + 4.087417207e-11
    p = p * z - 1.758378918e-08
    p = p * z + 1.046749919e-05
    p = p * z + 3.036098315e-03
    p = p * z + 1.302255337e-01
    p = p * z + 9.999998719e-01
    q = 2.448660933e-04 * z + 2.422276400e-02
    q = q * z + 4.635583851e-01
    q = q * z + 1.0
    rational = xc * p / q
    return tl.where(tl.abs(x) >= 9.0109138488769531, tl.where(x > 0.0, 1.0, -1.0), rational)


# ---------------------------------------------------------------- cell math


@triton.jit
def cell_forward(MODE: tl.constexpr, gi0, gi1, gi2, gi3, gh0, gh1, gh2, gh3, h, c):
    """One cell step on fp32 tiles. Returns (h', c', s0, s1, s2, s3): the new
    state and the activations saved for backward (unused ones are zeros)."""
    if MODE == LSTM:
        i = _sigmoid(gi0 + gh0)
        f = _sigmoid(gi1 + gh1)
        g = _tanh(gi2 + gh2)
        o = _sigmoid(gi3 + gh3)
        c_new = f * c + i * g
        h_new = o * _tanh(c_new)
        s0, s1, s2, s3 = i, f, g, o
    elif MODE == GRU:
        r = _sigmoid(gi0 + gh0)
        z = _sigmoid(gi1 + gh1)
        n = _tanh(gi2 + r * gh2)
        h_new = (1.0 - z) * n + z * h
        c_new = c
        s0, s1, s2, s3 = r, z, n, gh2
    elif MODE == RNN_TANH:
        h_new = _tanh(gi0 + gh0)
        c_new = c
        s0, s1, s2, s3 = h_new, h_new, h_new, h_new
    else:
        pre = gi0 + gh0
        h_new = tl.where(pre < 0.0, 0.0, pre)  # NaN stays NaN, as in torch.relu (tl.maximum may drop it)
        c_new = c
        s0, s1, s2, s3 = h_new, h_new, h_new, h_new
    return h_new, c_new, s0, s1, s2, s3


@triton.jit
def cell_backward(MODE: tl.constexpr, dh, dc, s0, s1, s2, s3, h_prev, c_prev):
    """Backward of cell_forward. dh, dc: gradients reaching h', c'. Returns
    (dgi0..3, dgh0..3, dh_direct, dc_prev): gate pre-activation gradients and
    the parts of dh_prev / dc_prev that do not go through W_hh."""
    if MODE == LSTM:
        i, f, g, o = s0, s1, s2, s3
        c_new = f * c_prev + i * g  # recomputed exactly as in cell_forward
        tc = _tanh(c_new)
        dc_total = dc + dh * o * (1.0 - tc * tc)
        d0 = dc_total * g * i * (1.0 - i)
        d1 = dc_total * c_prev * f * (1.0 - f)
        d2 = dc_total * i * (1.0 - g * g)
        d3 = dh * tc * o * (1.0 - o)
        dh_direct = dh * 0.0
        dc_prev = dc_total * f
        dgi0, dgi1, dgi2, dgi3 = d0, d1, d2, d3
        dgh0, dgh1, dgh2, dgh3 = d0, d1, d2, d3
    elif MODE == GRU:
        r, z, n, gh_n = s0, s1, s2, s3
        da_n = dh * (1.0 - z) * (1.0 - n * n)
        da_r = da_n * gh_n * r * (1.0 - r)
        da_z = dh * (h_prev - n) * z * (1.0 - z)
        dh_direct = dh * z
        dc_prev = dc
        dgi0, dgi1, dgi2, dgi3 = da_r, da_z, da_n, da_n * 0.0
        dgh0, dgh1, dgh2, dgh3 = da_r, da_z, da_n * r, da_n * 0.0
    else:
        if MODE == RNN_TANH:
            da = dh * (1.0 - s0 * s0)
        else:
            da = tl.where(s0 <= 0.0, 0.0, dh)  # a NaN s0 passes dh, as torch's threshold_backward does
        dh_direct = dh * 0.0
        dc_prev = dc
        dgi0, dgi1, dgi2, dgi3 = da, da, da, da
        dgh0, dgh1, dgh2, dgh3 = da, da, da, da
    return dgi0, dgi1, dgi2, dgi3, dgh0, dgh1, dgh2, dgh3, dh_direct, dc_prev


# ------------------------------------------------------------ tile load/store


@triton.jit
def tile_offsets(B, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, SPLIT_H: tl.constexpr):
    """This program's (BLOCK_B, BLOCK_H) tile of a (B, H) buffer: rows, cols,
    mask (rows < B and cols < H) and element offsets. Grid axis 0 splits the
    batch; axis 1 splits the hidden units when SPLIT_H, else the tile holds
    columns 0..BLOCK_H-1 (BLOCK_H >= H)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    if SPLIT_H:
        cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    else:
        cols = tl.arange(0, BLOCK_H)
    mask = (rows < B)[:, None] & (cols < H)[None, :]
    offs = rows[:, None] * H + cols[None, :]
    return rows, cols, mask, offs


@triton.jit
def load_state(MODE: tl.constexpr, h_ptr, c_ptr, offs, mask):
    """fp32 tiles of a (B, H) state pair (or of its gradients): c is zeros
    unless lstm."""
    h = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    c = h * 0.0
    if MODE == LSTM:
        c = tl.load(c_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return h, c


@triton.jit
def load_gates(ptr, rows, cols, mask, H, N: tl.constexpr):
    """The first N gate tiles of a (B, N*H) buffer as fp32; the rest zeros."""
    offs = rows[:, None] * (N * H) + cols[None, :]
    t0 = tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)
    t1, t2, t3 = t0 * 0.0, t0 * 0.0, t0 * 0.0
    if N > 1:
        t1 = tl.load(ptr + offs + H, mask=mask, other=0.0).to(tl.float32)
    if N > 2:
        t2 = tl.load(ptr + offs + 2 * H, mask=mask, other=0.0).to(tl.float32)
    if N > 3:
        t3 = tl.load(ptr + offs + 3 * H, mask=mask, other=0.0).to(tl.float32)
    return t0, t1, t2, t3


@triton.jit
def store_gates(ptr, rows, cols, mask, H, N: tl.constexpr, t0, t1, t2, t3):
    """Stores the first N tiles into a (B, N*H) buffer in its dtype."""
    offs = rows[:, None] * (N * H) + cols[None, :]
    ty = ptr.dtype.element_ty
    tl.store(ptr + offs, t0.to(ty), mask=mask)
    if N > 1:
        tl.store(ptr + offs + H, t1.to(ty), mask=mask)
    if N > 2:
        tl.store(ptr + offs + 2 * H, t2.to(ty), mask=mask)
    if N > 3:
        tl.store(ptr + offs + 3 * H, t3.to(ty), mask=mask)


@triton.jit
def alive_rows(lengths_ptr, rows, t, B, HAS_LENGTHS: tl.constexpr):
    """(BLOCK_B, 1) bool: sequence b still runs at step t (t < lengths[b])."""
    if HAS_LENGTHS:
        lens = tl.load(lengths_ptr + rows, mask=rows < B, other=0)
        alive = t < lens
    else:
        alive = rows >= 0
    return alive[:, None]


# ---------------------------------------------------------- one step, pointwise


@triton.jit
def step_forward_pointwise(MODE: tl.constexpr, G: tl.constexpr, S: tl.constexpr, HAS_PROJ: tl.constexpr,
                           h, c, gh0, gh1, gh2, gh3, alive,
                           gi_t_ptr, h_prev_t_ptr, c_prev_t_ptr, out_t_ptr, saved_t_ptr,
                           rows, cols, mask, H):
    """Everything of one forward step but the recurrent product: records the
    state entering the step (h_prev_t, c_prev_t), applies the cell, writes the
    output (zero past the end) and the saved activations. Returns the state
    after the step (unchanged for ended sequences).
    HAS_PROJ (lstm with proj_size): out_t is the unprojected h (B, H); the
    host projects it and keeps the (B, P) state and its record."""
    offs = rows[:, None] * H + cols[None, :]
    if not HAS_PROJ:
        tl.store(h_prev_t_ptr + offs, h.to(h_prev_t_ptr.dtype.element_ty), mask=mask)
    if MODE == LSTM:
        tl.store(c_prev_t_ptr + offs, c, mask=mask)
    gi0, gi1, gi2, gi3 = load_gates(gi_t_ptr, rows, cols, mask, H, G)
    h_new, c_new, s0, s1, s2, s3 = cell_forward(MODE, gi0, gi1, gi2, gi3, gh0, gh1, gh2, gh3, h, c)
    tl.store(out_t_ptr + offs, tl.where(alive, h_new, 0.0).to(out_t_ptr.dtype.element_ty), mask=mask)
    store_gates(saved_t_ptr, rows, cols, mask, H, S, s0, s1, s2, s3)
    return tl.where(alive, h_new, h), tl.where(alive, c_new, c)


@triton.jit
def step_backward_pointwise(MODE: tl.constexpr, G: tl.constexpr, S: tl.constexpr, HAS_PROJ: tl.constexpr,
                            dh, dc, alive,
                            grad_out_t_ptr, saved_t_ptr, h_prev_t_ptr, c_prev_t_ptr, dgh_t_ptr, dgi_t_ptr,
                            rows, cols, mask, H):
    """Everything of one backward step but the product dgh_t W_hh. dh, dc:
    gradients reaching the state after step t (without this step's output
    gradient). Writes dgh_t (and dgi_t for gru), zero for ended sequences.
    Returns (dh_direct, dc_prev): dh_prev = dh_direct + dgh_t W_hh.
    HAS_PROJ: dh is the gradient of the unprojected h with the output
    gradient already in it (the host handles the (B, P) side)."""
    offs = rows[:, None] * H + cols[None, :]
    if not HAS_PROJ:
        grad_out = tl.load(grad_out_t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dh = dh + tl.where(alive, grad_out, 0.0)  # the output is constant zero past the end
    s0, s1, s2, s3 = load_gates(saved_t_ptr, rows, cols, mask, H, S)
    h_prev = dh * 0.0
    if MODE == GRU:
        h_prev = tl.load(h_prev_t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    c_prev = dh * 0.0
    if MODE == LSTM:
        c_prev = tl.load(c_prev_t_ptr + offs, mask=mask, other=0.0)
    dgi0, dgi1, dgi2, dgi3, dgh0, dgh1, dgh2, dgh3, dh_direct, dc_prev = cell_backward(
        MODE, dh, dc, s0, s1, s2, s3, h_prev, c_prev)
    store_gates(dgh_t_ptr, rows, cols, mask, H, G, tl.where(alive, dgh0, 0.0), tl.where(alive, dgh1, 0.0),
                tl.where(alive, dgh2, 0.0), tl.where(alive, dgh3, 0.0))
    if MODE == GRU:
        store_gates(dgi_t_ptr, rows, cols, mask, H, G, tl.where(alive, dgi0, 0.0), tl.where(alive, dgi1, 0.0),
                    tl.where(alive, dgi2, 0.0), tl.where(alive, dgi3, 0.0))
    # An ended sequence's state passes through unchanged: all of dh, dc flow back.
    return tl.where(alive, dh_direct, dh), tl.where(alive, dc_prev, dc)
