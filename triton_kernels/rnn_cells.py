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

Layer extras (rnnkernels.reference.rnn_layer_extended; step path only, the
sequence kernels pass every flag False, so they and the plain step kernels
compile exactly as without them):
    LAYER_NORM      gh_t arrives as the raw h W_hh^T (no bias); the step
                    normalises each row over its G*H values, times the gain
                    ln_hh, plus b_hh. Needs the whole row in one program
                    (BLOCK_H >= H, one column block). Saves x_hat_hh_t
                    (B, G*H) fp32 and the row's rstd in stats_t[:, 0].
                    (LN of gi runs before the loop, for all steps at once.)
    CELL_NORM       lstm only: h' = o * tanh(LN(c'; ln_c_w, ln_c_b)) over the H
                    values of a row; mean and rstd saved in stats_t[:, 1:3]
    ZONEOUT_H/_C    h = k h_prev + (1 - k) h' with keep_h_t (B, H) (and c
                    with keep_c_t, lstm); the saved activations stay those
                    of the fresh h', c'
    RETURN_CELLS    lstm: cells_t (B, H), c after the step, zero past the end
    stats_t         (B, 4) fp32: rstd of LN(h W_hh^T), mean and rstd of
                    LN(c), (rstd of LN(gi), written by the host)
Backward adds dgh_raw_t (B, G*H), the gradient of the raw h W_hh^T (what
W_hh and the carried dh see with LAYER_NORM; dgh_t is that of the normalised
gh, for b_hh and ln_hh), and d_ln_cell_t (B, 2H) fp32, the per-row terms of
ln_c_w's and ln_c_b's gradients, summed over rows and steps by the host.

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
    # The tanh of csrc/cpu/fast_math.h (Cephes' tanhf): 1 - 2 / (e^2|x| + 1)
    # from |x| = 0.625 on, whose error is the final rounding, so that a
    # saturated gate's derivative 1 - tanh^2 keeps what libm's tanh keeps
    # (a rational minimax form kept a third of it); an odd polynomial below,
    # where 2 sigmoid(2x) - 1 and that form cancel (7.7e-5 relative at
    # 1e-4). Portable (no libdevice, runs in the interpreter). e^2|x|
    # overflows to Inf past |x| = 44: the tail is then exactly 1, as it is
    # from 9.0109 on by rounding, so the derivative reaches 0 as torch's
    # does. A NaN fails the comparison and the polynomial keeps it.
    ax = tl.abs(x)
    tail = 1.0 - 2.0 / (tl.exp(2.0 * ax) + 1.0)
    z = x * x
    p = -5.70498872745e-3
    p = p * z + 2.06390887954e-2
    p = p * z - 5.37397155531e-2
    p = p * z + 1.33314422036e-1
    p = p * z - 3.33332819422e-1
    small = x + x * z * p
    return tl.where(ax >= 0.625, tl.where(x < 0.0, -tail, tail), small)


LAYER_NORM_EPS = tl.constexpr(1e-5)  # rnnkernels.reference.LAYER_NORM_EPS (torch.nn.LayerNorm's default)


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _row_sum(v):
    """(BLOCK_B, BLOCK_H) -> (BLOCK_B, 1). tl.reduce with our own combine
    function: tl.sum is one of the standard library's @jit functions (see above)."""
    return tl.reduce(v, 1, _add)[:, None]


@triton.jit
def layer_norm_rows(N: tl.constexpr, t0, t1, t2, t3, mask, n):
    """LayerNorm without gain of each row of the first N tiles taken together
    (n = N * H values per row; `mask` marks the real ones): returns
    (x_hat0..3, rstd), x_hat zero outside the mask (and for tiles past N),
    rstd (BLOCK_B, 1). Two passes, mean then mean squared deviation, as
    csrc/cpu/pointwise_cpu.cpp row_moments (biased variance, torch's)."""
    total = _row_sum(tl.where(mask, t0, 0.0))
    if N > 1:
        total += _row_sum(tl.where(mask, t1, 0.0))
    if N > 2:
        total += _row_sum(tl.where(mask, t2, 0.0))
    if N > 3:
        total += _row_sum(tl.where(mask, t3, 0.0))
    mean = total / n
    d0 = tl.where(mask, t0 - mean, 0.0)
    d1, d2, d3 = d0 * 0.0, d0 * 0.0, d0 * 0.0
    if N > 1:
        d1 = tl.where(mask, t1 - mean, 0.0)
    if N > 2:
        d2 = tl.where(mask, t2 - mean, 0.0)
    if N > 3:
        d3 = tl.where(mask, t3 - mean, 0.0)
    rstd = 1.0 / tl.sqrt(_row_sum(d0 * d0 + d1 * d1 + d2 * d2 + d3 * d3) / n + LAYER_NORM_EPS)
    return d0 * rstd, d1 * rstd, d2 * rstd, d3 * rstd, mean, rstd


@triton.jit
def layer_norm_backward_rows(N: tl.constexpr, dyg0, dyg1, dyg2, dyg3, x0, x1, x2, x3, rstd, mask, n):
    """Backward through x_hat = (v - mean) * rstd over rows of the first N
    tiles (as layer_norm_rows): dyg = dy * gain per element (zero outside the
    mask), x = x_hat. Returns the gradients of v: rstd * (dyg - mean(dyg) -
    x_hat * mean(dyg * x_hat)), as csrc/cells.h layer_norm_backward."""
    mean_dyg = _row_sum(tl.where(mask, dyg0 + dyg1 + dyg2 + dyg3, 0.0)) / n
    mean_dyg_x = _row_sum(tl.where(mask, dyg0 * x0 + dyg1 * x1 + dyg2 * x2 + dyg3 * x3, 0.0)) / n
    v0 = rstd * (dyg0 - mean_dyg - x0 * mean_dyg_x)
    v1 = rstd * (dyg1 - mean_dyg - x1 * mean_dyg_x)
    v2 = rstd * (dyg2 - mean_dyg - x2 * mean_dyg_x)
    v3 = rstd * (dyg3 - mean_dyg - x3 * mean_dyg_x)
    return v0, v1, v2, v3


@triton.jit
def zoneout(keep, previous, fresh):
    """state = keep * previous + (1 - keep) * fresh (Krueger et al. 2016):
    keep a Bernoulli(p) draw in training, p itself in evaluation."""
    return keep * previous + (1.0 - keep) * fresh


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
def lstm_output_backward(dh, o, ty):
    """h' = o * ty with ty = tanh(y) (y = c', or LN(c') with CELL_NORM):
    returns the gradients of o's pre-activation and of y."""
    return dh * ty * o * (1.0 - o), dh * o * (1.0 - ty * ty)


@triton.jit
def lstm_cell_backward(dc_new, i, f, g, c_prev):
    """c' = f * c_prev + i * g, dc_new the whole gradient reaching c':
    returns the gradients of i's, f's and g's pre-activations and of c_prev."""
    return dc_new * g * i * (1.0 - i), dc_new * c_prev * f * (1.0 - f), dc_new * i * (1.0 - g * g), dc_new * f


@triton.jit
def lstm_cell_norm_backward(dh, dc, s0, s1, s2, s3, c_prev, mean_c, rstd_c, w_c, b_c, mask, H):
    """cell_backward for lstm with h' = o * tanh(LN(c'; w_c, b_c)) (CELL_NORM):
    the LN's row reduction sits between h's gradient and c's. mean_c, rstd_c
    (BLOCK_B, 1): the forward's row statistics; w_c, b_c (1, BLOCK_H).
    Returns (d_i, d_f, d_g, d_o, dc_prev, d_w_c, d_b_c): the last two the
    per-element terms of the gain's and bias's gradients."""
    i, f, g, o = s0, s1, s2, s3
    c_new = f * c_prev + i * g  # recomputed exactly as in cell_forward
    c_hat = tl.where(mask, (c_new - mean_c) * rstd_c, 0.0)
    ty = _tanh(w_c * c_hat + b_c)
    d_o, dy = lstm_output_backward(dh, o, ty)
    dy = tl.where(mask, dy, 0.0)
    dc_from_h, _, _, _ = layer_norm_backward_rows(1, dy * w_c, dy * 0.0, dy * 0.0, dy * 0.0,
                                                  c_hat, c_hat * 0.0, c_hat * 0.0, c_hat * 0.0, rstd_c, mask, H)
    d_i, d_f, d_g, dc_prev = lstm_cell_backward(dc + dc_from_h, i, f, g, c_prev)
    return d_i, d_f, d_g, d_o, dc_prev, dy * c_hat, dy


@triton.jit
def cell_backward(MODE: tl.constexpr, dh, dc, s0, s1, s2, s3, h_prev, c_prev):
    """Backward of cell_forward. dh, dc: gradients reaching h', c'. Returns
    (dgi0..3, dgh0..3, dh_direct, dc_prev): gate pre-activation gradients and
    the parts of dh_prev / dc_prev that do not go through W_hh."""
    if MODE == LSTM:
        i, f, g, o = s0, s1, s2, s3
        c_new = f * c_prev + i * g  # recomputed exactly as in cell_forward
        tc = _tanh(c_new)
        d3, dy = lstm_output_backward(dh, o, tc)
        d0, d1, d2, dc_prev = lstm_cell_backward(dc + dy, i, f, g, c_prev)
        dh_direct = dh * 0.0
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


@triton.jit
def load_row_vector(ptr, cols, H, N: tl.constexpr):
    """The first N (1, BLOCK_H) pieces of a (N*H,) vector (gains, biases) as
    fp32, zero past H; the rest zeros."""
    m = (cols < H)[None, :]
    t0 = tl.load(ptr + cols[None, :], mask=m, other=0.0).to(tl.float32)
    t1, t2, t3 = t0 * 0.0, t0 * 0.0, t0 * 0.0
    if N > 1:
        t1 = tl.load(ptr + H + cols[None, :], mask=m, other=0.0).to(tl.float32)
    if N > 2:
        t2 = tl.load(ptr + 2 * H + cols[None, :], mask=m, other=0.0).to(tl.float32)
    if N > 3:
        t3 = tl.load(ptr + 3 * H + cols[None, :], mask=m, other=0.0).to(tl.float32)
    return t0, t1, t2, t3


@triton.jit
def store_row_stat(stats_t_ptr, k: tl.constexpr, value, rows, B, alive):
    """stats_t[:, k] = value ((BLOCK_B, 1)), zero for ended sequences."""
    tl.store(stats_t_ptr + rows[:, None] * 4 + k, tl.where(alive, value, 0.0), mask=(rows < B)[:, None])


@triton.jit
def load_row_stat(stats_t_ptr, k: tl.constexpr, rows, B):
    return tl.load(stats_t_ptr + rows[:, None] * 4 + k, mask=(rows < B)[:, None], other=0.0)


# ---------------------------------------------------------- one step, pointwise


@triton.jit
def step_forward_pointwise(MODE: tl.constexpr, G: tl.constexpr, S: tl.constexpr, HAS_PROJ: tl.constexpr,
                           h, c, gh0, gh1, gh2, gh3, alive,
                           gi_t_ptr, h_prev_t_ptr, c_prev_t_ptr, out_t_ptr, saved_t_ptr,
                           rows, cols, mask, H, B,
                           LAYER_NORM: tl.constexpr, CELL_NORM: tl.constexpr, ZONEOUT_H: tl.constexpr,
                           ZONEOUT_C: tl.constexpr, RETURN_CELLS: tl.constexpr, HAS_BIAS: tl.constexpr,
                           b_hh_ptr, ln_hh_ptr, ln_c_w_ptr, ln_c_b_ptr, keep_h_t_ptr, keep_c_t_ptr,
                           xhat_hh_t_ptr, stats_t_ptr, cells_t_ptr):
    """Everything of one forward step but the recurrent product: records the
    state entering the step (h_prev_t, c_prev_t), applies the cell, writes the
    output (zero past the end) and the saved activations. Returns the state
    after the step (unchanged for ended sequences).
    HAS_PROJ (lstm with proj_size): out_t is the unprojected h (B, H); the
    host projects it and keeps the (B, P) state and its record.
    The layer extras (LAYER_NORM ... HAS_BIAS and the pointers after them;
    see the top of this file) are off (False, any pointer) for a plain layer.
    HAS_BIAS only matters with LAYER_NORM (b_hh is added after the norm;
    otherwise the host's product already holds it)."""
    offs = rows[:, None] * H + cols[None, :]
    if not HAS_PROJ:
        tl.store(h_prev_t_ptr + offs, h.to(h_prev_t_ptr.dtype.element_ty), mask=mask)
    if MODE == LSTM:
        tl.store(c_prev_t_ptr + offs, c, mask=mask)
    if LAYER_NORM:  # gh <- ln_hh * LN(h W_hh^T) + b_hh over the row's G*H values
        x0, x1, x2, x3, _, rstd = layer_norm_rows(G, gh0, gh1, gh2, gh3, mask, G * H)
        store_gates(xhat_hh_t_ptr, rows, cols, mask, H, G, tl.where(alive, x0, 0.0), tl.where(alive, x1, 0.0),
                    tl.where(alive, x2, 0.0), tl.where(alive, x3, 0.0))
        store_row_stat(stats_t_ptr, 0, rstd, rows, B, alive)
        w0, w1, w2, w3 = load_row_vector(ln_hh_ptr, cols, H, G)
        gh0, gh1, gh2, gh3 = w0 * x0, w1 * x1, w2 * x2, w3 * x3
        if HAS_BIAS:
            b0, b1, b2, b3 = load_row_vector(b_hh_ptr, cols, H, G)
            gh0, gh1, gh2, gh3 = gh0 + b0, gh1 + b1, gh2 + b2, gh3 + b3
    gi0, gi1, gi2, gi3 = load_gates(gi_t_ptr, rows, cols, mask, H, G)
    h_new, c_new, s0, s1, s2, s3 = cell_forward(MODE, gi0, gi1, gi2, gi3, gh0, gh1, gh2, gh3, h, c)
    if MODE == LSTM:
        if CELL_NORM:  # h' = o * tanh(LN(c')) over the row's H values (in place of cell_forward's h')
            c_hat, _, _, _, mean_c, rstd_c = layer_norm_rows(1, c_new, c_new, c_new, c_new, mask, H)
            w_c, _, _, _ = load_row_vector(ln_c_w_ptr, cols, H, 1)
            b_c, _, _, _ = load_row_vector(ln_c_b_ptr, cols, H, 1)
            h_new = s3 * _tanh(w_c * c_hat + b_c)
            store_row_stat(stats_t_ptr, 1, mean_c, rows, B, alive)
            store_row_stat(stats_t_ptr, 2, rstd_c, rows, B, alive)
        if ZONEOUT_C:
            c_new = zoneout(tl.load(keep_c_t_ptr + offs, mask=mask, other=0.0).to(tl.float32), c, c_new)
        if RETURN_CELLS:
            tl.store(cells_t_ptr + offs, tl.where(alive, c_new, 0.0).to(cells_t_ptr.dtype.element_ty), mask=mask)
    if ZONEOUT_H:
        h_new = zoneout(tl.load(keep_h_t_ptr + offs, mask=mask, other=0.0).to(tl.float32), h, h_new)
    tl.store(out_t_ptr + offs, tl.where(alive, h_new, 0.0).to(out_t_ptr.dtype.element_ty), mask=mask)
    store_gates(saved_t_ptr, rows, cols, mask, H, S, s0, s1, s2, s3)
    return tl.where(alive, h_new, h), tl.where(alive, c_new, c)


@triton.jit
def step_backward_pointwise(MODE: tl.constexpr, G: tl.constexpr, S: tl.constexpr, HAS_PROJ: tl.constexpr,
                            dh, dc, alive,
                            grad_out_t_ptr, saved_t_ptr, h_prev_t_ptr, c_prev_t_ptr, dgh_t_ptr, dgi_t_ptr,
                            rows, cols, mask, H, B,
                            LAYER_NORM: tl.constexpr, CELL_NORM: tl.constexpr, ZONEOUT_H: tl.constexpr,
                            ZONEOUT_C: tl.constexpr, RETURN_CELLS: tl.constexpr,
                            ln_hh_ptr, ln_c_w_ptr, ln_c_b_ptr, keep_h_t_ptr, keep_c_t_ptr,
                            xhat_hh_t_ptr, stats_t_ptr, grad_cells_t_ptr, dgh_raw_t_ptr, d_ln_cell_t_ptr):
    """Everything of one backward step but the product dgh_t W_hh. dh, dc:
    gradients reaching the state after step t (without this step's output
    gradient). Writes dgh_t (and dgi_t for gru), zero for ended sequences.
    Returns (dh_direct, dc_prev): dh_prev = dh_direct + dgh_t W_hh.
    HAS_PROJ: dh is the gradient of the unprojected h with the output
    gradient already in it (the host handles the (B, P) side).
    Layer extras as in step_forward_pointwise; with LAYER_NORM the product
    is dgh_raw_t W_hh instead (dgh_raw_t written here)."""
    offs = rows[:, None] * H + cols[None, :]
    if not HAS_PROJ:
        grad_out = tl.load(grad_out_t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dh = dh + tl.where(alive, grad_out, 0.0)  # the output is constant zero past the end
    dh_cell = dh  # the gradient of the fresh h' (before zoneout)
    if ZONEOUT_H:
        keep_h = tl.load(keep_h_t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dh_cell = (1.0 - keep_h) * dh
    if RETURN_CELLS:  # the cell output is c after the step: its gradient joins c's (constant zero past the end)
        dc = dc + tl.where(alive, tl.load(grad_cells_t_ptr + offs, mask=mask, other=0.0).to(tl.float32), 0.0)
    dc_cell = dc  # the gradient of the fresh c' reaching it through c (lstm)
    if ZONEOUT_C:
        keep_c = tl.load(keep_c_t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dc_cell = (1.0 - keep_c) * dc
    s0, s1, s2, s3 = load_gates(saved_t_ptr, rows, cols, mask, H, S)
    h_prev = dh * 0.0
    if MODE == GRU:
        h_prev = tl.load(h_prev_t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    c_prev = dh * 0.0
    if MODE == LSTM:
        c_prev = tl.load(c_prev_t_ptr + offs, mask=mask, other=0.0)
    if CELL_NORM:  # lstm only (rnn.Extras.flags sets it for lstm only)
        w_c, _, _, _ = load_row_vector(ln_c_w_ptr, cols, H, 1)
        b_c, _, _, _ = load_row_vector(ln_c_b_ptr, cols, H, 1)
        d_i, d_f, d_g, d_o, dc_prev, d_w_c, d_b_c = lstm_cell_norm_backward(
            dh_cell, dc_cell, s0, s1, s2, s3, c_prev, load_row_stat(stats_t_ptr, 1, rows, B),
            load_row_stat(stats_t_ptr, 2, rows, B), w_c, b_c, mask, H)
        store_gates(d_ln_cell_t_ptr, rows, cols, mask, H, 2, tl.where(alive, d_w_c, 0.0),
                    tl.where(alive, d_b_c, 0.0), d_w_c, d_w_c)
        dgi0, dgi1, dgi2, dgi3 = d_i, d_f, d_g, d_o
        dgh0, dgh1, dgh2, dgh3 = d_i, d_f, d_g, d_o
        dh_direct = dh * 0.0
    else:
        dgi0, dgi1, dgi2, dgi3, dgh0, dgh1, dgh2, dgh3, dh_direct, dc_prev = cell_backward(
            MODE, dh_cell, dc_cell, s0, s1, s2, s3, h_prev, c_prev)
    if ZONEOUT_H:
        dh_direct = dh_direct + keep_h * dh
    if ZONEOUT_C:
        dc_prev = dc_prev + keep_c * dc
    dgh0, dgh1 = tl.where(alive, dgh0, 0.0), tl.where(alive, dgh1, 0.0)
    dgh2, dgh3 = tl.where(alive, dgh2, 0.0), tl.where(alive, dgh3, 0.0)
    store_gates(dgh_t_ptr, rows, cols, mask, H, G, dgh0, dgh1, dgh2, dgh3)
    if MODE == GRU:
        store_gates(dgi_t_ptr, rows, cols, mask, H, G, tl.where(alive, dgi0, 0.0), tl.where(alive, dgi1, 0.0),
                    tl.where(alive, dgi2, 0.0), tl.where(alive, dgi3, 0.0))
    if LAYER_NORM:  # back through gh = ln_hh * LN(h W_hh^T) + b_hh
        w0, w1, w2, w3 = load_row_vector(ln_hh_ptr, cols, H, G)
        x0, x1, x2, x3 = load_gates(xhat_hh_t_ptr, rows, cols, mask, H, G)
        r0, r1, r2, r3 = layer_norm_backward_rows(G, dgh0 * w0, dgh1 * w1, dgh2 * w2, dgh3 * w3, x0, x1, x2, x3,
                                                  load_row_stat(stats_t_ptr, 0, rows, B), mask, G * H)
        store_gates(dgh_raw_t_ptr, rows, cols, mask, H, G, r0, r1, r2, r3)
    # An ended sequence's state passes through unchanged: all of dh, dc flow back.
    return tl.where(alive, dh_direct, dh), tl.where(alive, dc_prev, dc)
