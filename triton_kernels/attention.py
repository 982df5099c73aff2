"""Dot-product attention in Triton: flash-style forward and backward, weights
rebuilt from the log-sum-exp on demand, and a split-key decode path for Tq = 1.

Semantics: rnnkernels/attention.py (reference_attention). Tensors are 4-D
contiguous (B, H, T, D). Both masks are prefix masks: query row i sees keys
j < visible_end(i) = min(key_lengths[b], i + Tk - Tq + 1 if causal), so no
dense mask is read, and key blocks past a row block's last visible key are
skipped. A row that sees no key gets a zero context, zero weights, zero grads.
Key and value rows past key_lengths are never loaded (read as 0), so padding
reaches no result (rnnkernels/attention.py states the rule).

Scores are kept in base 2 (s2 = q.k * scale * log2(e)) so the softmax uses
exp2; `lse` here is the base-2 log-sum-exp, float32 (B, H, Tq), -inf for a row
that sees no key. Accumulation is float32 for every input dtype; float32
inputs use IEEE dots (not TF32) so they meet the 1e-5 tolerance.

Launchers:
    forward(q, k, v, lengths, causal, scale)            -> (context, lse)
    weights(q, k, lse, lengths, causal, scale)          -> (B, H, Tq, Tk)
    backward(do, dw, q, k, v, o, lse, w, lengths, causal, scale) -> (dq, dk, dv)
The kernels are decorated at import, so TRITON_INTERPRET=1 must be set before
this module is imported to run them on CPU tensors.
"""
import triton
import triton.language as tl
import torch

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256


@triton.jit
def _visible_end(rows, length, Tq, Tk, CAUSAL: tl.constexpr):
    """Per query row: keys j < end are visible (0 for rows past Tq)."""
    end = tl.zeros_like(rows) + length
    if CAUSAL:
        end = tl.minimum(end, tl.maximum(rows + (Tk - Tq + 1), 0))
    return tl.where(rows < Tq, end, 0)


@triton.jit
def _load_length(LENGTHS, b, Tk, HAS_LENGTHS: tl.constexpr):
    if HAS_LENGTHS:
        length = tl.load(LENGTHS + b).to(tl.int32)
    else:
        length = Tk
    return length


@triton.jit
def _load_tile(X, bh, steps, T, features, F):
    """X[bh, steps, features] of a contiguous (BH, T, F) tensor: a (len(steps), len(features)) tile, 0 outside."""
    return tl.load(X + bh * T * F + steps[:, None] * F + features[None, :],
                   mask=(steps[:, None] < T) & (features[None, :] < F), other=0.0)


@triton.jit
def _load_keys(X, bh, cols, Tk, length, features, F):
    """Key-side tile X[bh, cols, features] of a contiguous (BH, Tk, F) key or value tensor, 0 at padded keys
    (cols >= length, length <= Tk): padding may hold NaN, and a zero weight times NaN is NaN."""
    return tl.load(X + bh * Tk * F + cols[:, None] * F + features[None, :],
                   mask=(cols[:, None] < length) & (features[None, :] < F), other=0.0)


@triton.jit
def _store_tile(X, bh, steps, T, features, F, tile):
    """X[bh, steps, features] = tile (in X's dtype), inside (T, F) only."""
    tl.store(X + bh * T * F + steps[:, None] * F + features[None, :], tile.to(X.dtype.element_ty),
             mask=(steps[:, None] < T) & (features[None, :] < F))


@triton.jit
def _scores_and_online_update(q, k, cols, end, m_i, l_i, scale_log2):
    """One key block of the online softmax: the block's base-2 scores (masked to
    -inf past each row's visible end) and the running max m and sum l updated
    with them. Returns (p = exp2(s - m_new), alpha = exp2(m_old - m_new), m_new,
    l_new); the forward rescales its context by alpha, the backward only keeps m, l."""
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale_log2               # (BM, BN)
    s = tl.where(cols[None, :] < end[:, None], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing seen yet stays at 0
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    return p, alpha, m_new, l_i * alpha + tl.sum(p, 1)


@triton.jit
def _forward_kernel(Q, K, V, O, LSE, LENGTHS, scale_log2, Tq, Tk, D, DV, H,
                    HAS_LENGTHS: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    # One program: BLOCK_M query rows of one (batch, head); online softmax over key blocks.
    bh = tl.program_id(1)
    length = _load_length(LENGTHS, bh // H, Tk, HAS_LENGTHS)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dq = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    q = _load_tile(Q, bh, rows, Tq, dq, D)            # (BM, BD)
    end = _visible_end(rows, length, Tq, Tk, CAUSAL)                                  # (BM,)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)                               # running max (base 2)
    l_i = tl.zeros([BLOCK_M], tl.float32)                                             # running sum
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)                                   # (BM, BDV)
    for n0 in range(0, tl.max(end, 0), BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        k = _load_keys(K, bh, cols, Tk, length, dq, D)  # (BN, BD)
        p, alpha, m_i, l_i = _scores_and_online_update(q, k, cols, end, m_i, l_i, scale_log2)
        v = _load_keys(V, bh, cols, Tk, length, dv, DV)  # (BN, BDV)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
    seen = l_i > 0
    safe_l = tl.where(seen, l_i, 1.0)
    out = tl.where(seen[:, None], acc / safe_l[:, None], 0.0)
    _store_tile(O, bh, rows, Tq, dv, DV, out)
    tl.store(LSE + bh * Tq + rows, tl.where(seen, m_i + tl.log2(safe_l), float("-inf")), mask=rows < Tq)


@triton.jit
def _decode_split_kernel(Q, K, V, M_PART, L_PART, ACC_PART, LENGTHS, scale_log2, Tk, D, DV, H, keys_per_split,
                         num_splits, HAS_LENGTHS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_DV: tl.constexpr):
    # Tq = 1: program (split, bh) reduces keys [split * keys_per_split, +keys_per_split) to a
    # partial (max, sum, unnormalised context); _decode_combine_kernel merges the splits.
    split = tl.program_id(0)
    bh = tl.program_id(1)
    length = _load_length(LENGTHS, bh // H, Tk, HAS_LENGTHS)
    dq = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + bh * D + dq, mask=dq < D, other=0.0).to(tl.float32)              # (BD,)
    lo = split * keys_per_split
    hi = tl.minimum(lo + keys_per_split, length)
    m_i = tl.max(tl.full([BLOCK_N], float("-inf"), tl.float32), 0)
    l_i = tl.sum(tl.zeros([BLOCK_N], tl.float32), 0)
    acc = tl.zeros([BLOCK_DV], tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        k = tl.load(K + bh * Tk * D + cols[:, None] * D + dq[None, :],
                    mask=(cols[:, None] < hi) & (dq[None, :] < D), other=0.0)         # (BN, BD)
        s = tl.sum(k.to(tl.float32) * q[None, :], 1) * scale_log2                     # (BN,)
        s = tl.where(cols < hi, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe)
        l_i = l_i * alpha + tl.sum(p, 0)
        v = tl.load(V + bh * Tk * DV + cols[:, None] * DV + dv[None, :],
                    mask=(cols[:, None] < hi) & (dv[None, :] < DV), other=0.0)        # (BN, BDV)
        acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), 0)
        m_i = m_new
    part = bh * num_splits + split
    tl.store(M_PART + part, m_i)
    tl.store(L_PART + part, l_i)
    tl.store(ACC_PART + part * DV + dv, acc, mask=dv < DV)


@triton.jit
def _decode_combine_kernel(M_PART, L_PART, ACC_PART, O, LSE, DV, num_splits, BLOCK_S: tl.constexpr,
                           BLOCK_DV: tl.constexpr):
    bh = tl.program_id(0)
    sp = tl.arange(0, BLOCK_S)
    dv = tl.arange(0, BLOCK_DV)
    m_s = tl.load(M_PART + bh * num_splits + sp, mask=sp < num_splits, other=float("-inf"))   # (BS,)
    l_s = tl.load(L_PART + bh * num_splits + sp, mask=sp < num_splits, other=0.0)
    acc_s = tl.load(ACC_PART + (bh * num_splits + sp[:, None]) * DV + dv[None, :],
                    mask=(sp[:, None] < num_splits) & (dv[None, :] < DV), other=0.0)         # (BS, BDV)
    m = tl.max(m_s, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(m_s - m_safe)
    l_sum = tl.sum(l_s * w, 0)
    seen = l_sum > 0
    safe_l = tl.where(seen, l_sum, 1.0)
    out = tl.where(seen, tl.sum(acc_s * w[:, None], 0) / safe_l, 0.0)
    tl.store(O + bh * DV + dv, out.to(O.dtype.element_ty), mask=dv < DV)
    tl.store(LSE + bh, tl.where(seen, m_safe + tl.log2(safe_l), float("-inf")))


@triton.jit
def _weights_kernel(Q, K, LSE, W, LENGTHS, scale_log2, Tq, Tk, D, H, HAS_LENGTHS: tl.constexpr,
                    CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # W tile = exp2(s2 - lse) on visible keys, 0 elsewhere: the exact softmax weights.
    bh = tl.program_id(2)
    length = _load_length(LENGTHS, bh // H, Tk, HAS_LENGTHS)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    dq = tl.arange(0, BLOCK_D)
    q = _load_tile(Q, bh, rows, Tq, dq, D)
    k = _load_keys(K, bh, cols, Tk, length, dq, D)
    lse = tl.load(LSE + bh * Tq + rows, mask=rows < Tq, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale_log2
    visible = cols[None, :] < _visible_end(rows, length, Tq, Tk, CAUSAL)[:, None]
    p = tl.where(visible, tl.exp2(s - tl.where(visible, lse[:, None], 0.0)), 0.0)
    _store_tile(W, bh, rows, Tq, cols, Tk, p)


@triton.jit
def _probs_and_dprobs(q, k, v, do, lse, rows, cols, end, DW, bh, scale_log2, Tq, Tk, HAS_DW: tl.constexpr):
    """Rebuilds P (BM, BN) from lse (float64: s - lse keeps a weight's exponent to a
    float32 ulp of itself, not of |s|) and returns (P, dP = dO V^T + dW)."""
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale_log2
    visible = cols[None, :] < end[:, None]
    p = tl.where(visible, tl.exp2((s - tl.where(visible, lse[:, None], 0.0)).to(tl.float32)), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision="ieee")
    if HAS_DW:
        dp += _load_tile(DW, bh, rows, Tq, cols, Tk).to(tl.float32)
    return p, dp


@triton.jit
def _probs_and_dscores(q, k, v, do, lse, delta, rows, cols, end, DW, bh, scale_log2, Tq, Tk,
                       HAS_DW: tl.constexpr):
    """(P, dS) with dS = P * (dP - delta); dP - delta in float64 (delta is), where it
    cancels for the keys that hold most of a row's weight."""
    p, dp = _probs_and_dprobs(q, k, v, do, lse, rows, cols, end, DW, bh, scale_log2, Tq, Tk, HAS_DW)
    # A row with one visible key has weight 1 whatever the score: its scores get exactly no gradient.
    return p, tl.where(end[:, None] > 1, p * (dp.to(tl.float64) - delta[:, None]).to(tl.float32), 0.0)


@triton.jit
def _backward_rows_kernel(Q, K, V, DO, LSE, DELTA, DW, LENGTHS, scale_log2, Tq, Tk, D, DV, H,
                          HAS_LENGTHS: tl.constexpr, HAS_DW: tl.constexpr, CAUSAL: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                          BLOCK_DV: tl.constexpr):
    # One program: for BLOCK_M query rows, lse and delta = rowsum(P * (dO V^T + dW)),
    # float64, from the very scores and dP that the dk/dv and dq kernels rebuild. With the
    # forward's float32 lse (the decode path rounds its scores differently, and m + log2(l)
    # keeps only an ulp of |s|: 1e-6 at |s| ~ 10, the size of the small weights) and
    # FlashAttention's float32 delta = dO . O, dS = P * (dP - delta) cancelled on rounding
    # errors where the softmax saturates: dq and dk up to 440x the truth's size where
    # torch's float32 softmax backward erred 0.67x (tests/test_fuzz.py). As the CPU kernel
    # does, delta is summed in double, and dP - delta taken in double.
    bh = tl.program_id(1)
    length = _load_length(LENGTHS, bh // H, Tk, HAS_LENGTHS)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dq = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    q = _load_tile(Q, bh, rows, Tq, dq, D)
    do = _load_tile(DO, bh, rows, Tq, dv, DV)
    end = _visible_end(rows, length, Tq, Tk, CAUSAL)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # pass 1: the online max and sum of the forward
    l_i = tl.zeros([BLOCK_M], tl.float32)
    for n0 in range(0, tl.max(end, 0), BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        k = _load_keys(K, bh, cols, Tk, length, dq, D)
        _, _, m_i, l_i = _scores_and_online_update(q, k, cols, end, m_i, l_i, scale_log2)
    seen = l_i > 0
    lse = tl.where(seen, m_i.to(tl.float64) + tl.log2(tl.where(seen, l_i, 1.0)).to(tl.float64), float("-inf"))
    delta = tl.zeros([BLOCK_M], tl.float64)  # pass 2, the products summed exactly enough to cancel
    for n0 in range(0, tl.max(end, 0), BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        k = _load_keys(K, bh, cols, Tk, length, dq, D)
        v = _load_keys(V, bh, cols, Tk, length, dv, DV)
        p, dp = _probs_and_dprobs(q, k, v, do, lse, rows, cols, end, DW, bh, scale_log2, Tq, Tk, HAS_DW)
        delta += tl.sum(p.to(tl.float64) * dp.to(tl.float64), 1)
    tl.store(LSE + bh * Tq + rows, lse, mask=rows < Tq)
    tl.store(DELTA + bh * Tq + rows, delta, mask=rows < Tq)


@triton.jit
def _backward_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DW, DK, DVAL, LENGTHS, scale_log2, scale, Tq, Tk, D, DV, H,
                          HAS_LENGTHS: tl.constexpr, HAS_DW: tl.constexpr, CAUSAL: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                          BLOCK_DV: tl.constexpr):
    # One program: BLOCK_N keys of one (batch, head); loops over the query rows that see them.
    bh = tl.program_id(1)
    length = _load_length(LENGTHS, bh // H, Tk, HAS_LENGTHS)
    n0 = tl.program_id(0) * BLOCK_N
    cols = n0 + tl.arange(0, BLOCK_N)
    dq = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    k = _load_keys(K, bh, cols, Tk, length, dq, D)  # (BN, BD)
    v = _load_keys(V, bh, cols, Tk, length, dv, DV)  # (BN, BDV)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dval = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    first_row = 0
    if CAUSAL:  # rows before this one see none of these keys
        first_row = tl.maximum(n0 - (Tk - Tq), 0)
    last_row = tl.where(n0 < length, Tq, 0)
    for m0 in range((first_row // BLOCK_M) * BLOCK_M, last_row, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        q = _load_tile(Q, bh, rows, Tq, dq, D)         # (BM, BD)
        do = _load_tile(DO, bh, rows, Tq, dv, DV)       # (BM, BDV)
        lse = tl.load(LSE + bh * Tq + rows, mask=rows < Tq, other=0.0)
        delta = tl.load(DELTA + bh * Tq + rows, mask=rows < Tq, other=0.0)
        end = _visible_end(rows, length, Tq, Tk, CAUSAL)
        p, ds = _probs_and_dscores(q, k, v, do, lse, delta, rows, cols, end, DW, bh, scale_log2, Tq, Tk, HAS_DW)
        dval += tl.dot(tl.trans(p).to(do.dtype), do, input_precision="ieee")
        dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision="ieee")
    _store_tile(DK, bh, cols, Tk, dq, D, dk * scale)
    _store_tile(DVAL, bh, cols, Tk, dv, DV, dval)


@triton.jit
def _backward_dq_kernel(Q, K, V, DO, LSE, DELTA, DW, DQ, LENGTHS, scale_log2, scale, Tq, Tk, D, DV, H,
                        HAS_LENGTHS: tl.constexpr, HAS_DW: tl.constexpr, CAUSAL: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                        BLOCK_DV: tl.constexpr):
    # One program: BLOCK_M query rows of one (batch, head); loops over their visible key blocks.
    bh = tl.program_id(1)
    length = _load_length(LENGTHS, bh // H, Tk, HAS_LENGTHS)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dq = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    q = _load_tile(Q, bh, rows, Tq, dq, D)
    do = _load_tile(DO, bh, rows, Tq, dv, DV)
    lse = tl.load(LSE + bh * Tq + rows, mask=rows < Tq, other=0.0)
    delta = tl.load(DELTA + bh * Tq + rows, mask=rows < Tq, other=0.0)
    end = _visible_end(rows, length, Tq, Tk, CAUSAL)
    grad_q = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for n0 in range(0, tl.max(end, 0), BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        k = _load_keys(K, bh, cols, Tk, length, dq, D)
        v = _load_keys(V, bh, cols, Tk, length, dv, DV)
        _, ds = _probs_and_dscores(q, k, v, do, lse, delta, rows, cols, end, DW, bh, scale_log2, Tq, Tk, HAS_DW)
        grad_q += tl.dot(ds.to(k.dtype), k, input_precision="ieee")
    _store_tile(DQ, bh, rows, Tq, dq, D, grad_q * scale)


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _tiles(block_d: int, device: torch.device):
    """(BLOCK_M, BLOCK_N, num_warps): small tiles under the interpreter (CPU tensors)."""
    if device.type != "cuda":
        return 16, 16, 1
    if block_d <= 64:
        return 128, 64, 4
    if block_d <= 128:
        return 64, 64, 4
    return 64, 32, 8


def _lengths_arg(lengths, q):
    return (lengths, True) if lengths is not None else (q, False)  # a dummy pointer when absent


def forward(q, k, v, lengths, causal: bool, scale: float):
    """(context (B, H, Tq, Dv) in q's dtype, lse (B, H, Tq) float32, base 2)."""
    batch, heads, tq, d = q.shape
    tk, dval = k.shape[2], v.shape[3]
    out = torch.empty((batch, heads, tq, dval), dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, tq), dtype=torch.float32, device=q.device)
    if out.numel() == 0 and lse.numel() == 0:
        return out, lse
    len_ptr, has_lengths = _lengths_arg(lengths, q)
    block_d, block_dv = _block(d), _block(dval)
    scale_log2 = scale * LOG2E
    if tq == 1:
        # Decode: split the keys over programs so a (B, H) grid still fills the GPU.
        block_n = 16 if q.device.type != "cuda" else 64
        num_splits = max(1, min(64, triton.cdiv(tk, 4 * block_n)))
        keys_per_split = triton.cdiv(triton.cdiv(max(tk, 1), num_splits), block_n) * block_n
        num_splits = triton.cdiv(max(tk, 1), keys_per_split)
        parts = batch * heads * num_splits
        m_part = torch.empty(parts, dtype=torch.float32, device=q.device)
        l_part = torch.empty(parts, dtype=torch.float32, device=q.device)
        acc_part = torch.empty((parts, dval), dtype=torch.float32, device=q.device)
        _decode_split_kernel[(num_splits, batch * heads)](
            q, k, v, m_part, l_part, acc_part, len_ptr, scale_log2, tk, d, dval, heads, keys_per_split, num_splits,
            HAS_LENGTHS=has_lengths, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_DV=block_dv)
        _decode_combine_kernel[(batch * heads,)](m_part, l_part, acc_part, out, lse, dval, num_splits,
                                                 BLOCK_S=_block(num_splits), BLOCK_DV=block_dv)
        return out, lse
    block_m, block_n, warps = _tiles(max(block_d, block_dv), q.device)
    _forward_kernel[(triton.cdiv(tq, block_m), batch * heads)](
        q, k, v, out, lse, len_ptr, scale_log2, tq, tk, d, dval, heads, HAS_LENGTHS=has_lengths, CAUSAL=causal,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_DV=block_dv, num_warps=warps)
    return out, lse


def weights(q, k, lse, lengths, causal: bool, scale: float):
    """The exact attention weights (B, H, Tq, Tk) in q's dtype, rebuilt from lse."""
    batch, heads, tq, d = q.shape
    tk = k.shape[2]
    w = torch.empty((batch, heads, tq, tk), dtype=q.dtype, device=q.device)
    if w.numel() == 0:
        return w
    len_ptr, has_lengths = _lengths_arg(lengths, q)
    block_m, block_n, warps = _tiles(_block(d), q.device)
    _weights_kernel[(triton.cdiv(tq, block_m), triton.cdiv(tk, block_n), batch * heads)](
        q, k, lse, w, len_ptr, scale * LOG2E, tq, tk, d, heads, HAS_LENGTHS=has_lengths, CAUSAL=causal,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=_block(d), num_warps=warps)
    return w


def backward(grad_out, grad_weights, q, k, v, out, lse, w, lengths, causal: bool, scale: float):
    """(grad_q, grad_k, grad_v); grad_weights (B, H, Tq, Tk) or None. The
    forward's out, lse and w are not read (the op's schema keeps them): the
    backward rebuilds lse and delta from its own scores (_backward_rows_kernel)."""
    batch, heads, tq, d = q.shape
    tk, dval = k.shape[2], v.shape[3]
    grad_q, grad_k, grad_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if batch * heads == 0 or tq == 0 or tk == 0:
        return grad_q.zero_(), grad_k.zero_(), grad_v.zero_()
    if grad_weights is not None:
        grad_weights = grad_weights.contiguous()
    len_ptr, has_lengths = _lengths_arg(lengths, q)
    block_d, block_dv = _block(d), _block(dval)
    block_m, block_n, warps = _tiles(max(block_d, block_dv), q.device)
    common = dict(HAS_LENGTHS=has_lengths, HAS_DW=grad_weights is not None, CAUSAL=causal, BLOCK_M=block_m,
                  BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_DV=block_dv, num_warps=warps)
    dw_ptr = grad_weights if grad_weights is not None else q
    scale_log2 = scale * LOG2E
    # lse and delta (B, H, Tq), float64, of the backward's own scores (_backward_rows_kernel)
    lse = torch.empty(batch, heads, tq, dtype=torch.float64, device=q.device)
    delta = torch.empty_like(lse)
    _backward_rows_kernel[(triton.cdiv(tq, block_m), batch * heads)](
        q, k, v, grad_out, lse, delta, dw_ptr, len_ptr, scale_log2, tq, tk, d, dval, heads, **common)
    _backward_dkdv_kernel[(triton.cdiv(tk, block_n), batch * heads)](
        q, k, v, grad_out, lse, delta, dw_ptr, grad_k, grad_v, len_ptr, scale_log2, scale, tq, tk, d, dval, heads,
        **common)
    _backward_dq_kernel[(triton.cdiv(tq, block_m), batch * heads)](
        q, k, v, grad_out, lse, delta, dw_ptr, grad_q, len_ptr, scale_log2, scale, tq, tk, d, dval, heads, **common)
    return grad_q, grad_k, grad_v
