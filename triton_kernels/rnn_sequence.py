"""Sequence path: the whole layer in one launch. Each program owns BLOCK_B
batch rows and walks every time step itself, so there is no launch per step
and no round trip through the host; used for small hidden sizes (see
rnn.choose_path).

No layer extras (LayerNorm, zoneout, cell outputs): those layers always
take the step path (rnn.layer_forward_ext), and these kernels pass every
extras flag of rnn_cells.py False.

State: h and c (fp32, (BLOCK_B, BLOCK_H), BLOCK_H >= H) stay in registers for
the whole walk. The recurrent product h W_hh^T is a K-loop of tl.dot over
BLOCK_K-wide chunks of h; those chunks are read back from h_prev (the record
of the state entering step t, which backward needs anyway, so it is written
regardless and is hot in L1/L2), because Triton cannot slice a register tile.
A debug_barrier orders that write before the reads of other threads.
W_hh is re-read from global memory (L2) each step. tl.dot needs tiles >= 16 on
each side: BLOCK_B, BLOCK_H, BLOCK_K are >= 16 and masked.

Known limit: there are cdiv(B, BLOCK_B) programs, so a batch <= 16 runs on a
single SM, which reads all of W_hh every step. Splitting the hidden units
across programs would need a grid-wide barrier per step, which Triton's
interpreter (programs run one after another) cannot run, so it is not done.

UPCAST_DOT: Triton's interpreter (3.9) multiplies bfloat16 tiles as their raw
uint16 bits, so under the interpreter bf16 operands are widened to fp32
before tl.dot; compiled kernels use the native bf16 tensor-core dot.
"""
import triton
import triton.language as tl

from .rnn_cells import (LSTM, alive_rows, load_state, step_backward_pointwise, step_forward_pointwise,
                        tile_offsets)


@triton.jit
def recurrent_gate(h_t_ptr, w_ptr, b_ptr, gate, rows, cols, B, H,
                   HAS_BIAS: tl.constexpr, UPCAST_DOT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                   BLOCK_K: tl.constexpr):
    """(BLOCK_B, BLOCK_H) fp32 tile of h W_hh^T + b_hh for one gate.
    h_t_ptr: (B, H) storage dtype; w_ptr: W_hh (G*H, H)."""
    acc = tl.full((BLOCK_B, BLOCK_H), 0.0, tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        h_chunk = tl.load(h_t_ptr + rows[:, None] * H + ks[None, :],
                          mask=(rows < B)[:, None] & (ks < H)[None, :], other=0.0)       # (BLOCK_B, BLOCK_K)
        w_chunk = tl.load(w_ptr + (gate * H + cols[None, :]) * H + ks[:, None],
                          mask=(ks < H)[:, None] & (cols < H)[None, :], other=0.0)       # (BLOCK_K, BLOCK_H) of W^T
        if UPCAST_DOT:
            h_chunk, w_chunk = h_chunk.to(tl.float32), w_chunk.to(tl.float32)
        acc = tl.dot(h_chunk, w_chunk, acc, input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(b_ptr + gate * H + cols, mask=cols < H, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def gate_grad_product(dg_t_ptr, w_ptr, rows, cols, B, H, G: tl.constexpr, UPCAST_DOT: tl.constexpr,
                      BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_B, BLOCK_H) fp32 tile of dgh_t W_hh: dgh_t (B, G*H), W_hh (G*H, H)."""
    acc = tl.full((BLOCK_B, BLOCK_H), 0.0, tl.float32)
    for k0 in range(0, G * H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        dg_chunk = tl.load(dg_t_ptr + rows[:, None] * (G * H) + ks[None, :],
                           mask=(rows < B)[:, None] & (ks < G * H)[None, :], other=0.0)  # (BLOCK_B, BLOCK_K)
        w_chunk = tl.load(w_ptr + ks[:, None] * H + cols[None, :],
                          mask=(ks < G * H)[:, None] & (cols < H)[None, :], other=0.0)   # (BLOCK_K, BLOCK_H)
        if UPCAST_DOT:
            dg_chunk, w_chunk = dg_chunk.to(tl.float32), w_chunk.to(tl.float32)
        acc = tl.dot(dg_chunk, w_chunk, acc, input_precision="ieee")
    return acc


@triton.jit
def sequence_forward_kernel(
    gi_ptr,                        # (T, B, G*H) x W_ih^T + b_ih for all steps
    w_hh_ptr, b_hh_ptr,            # (G*H, H), (G*H,)
    h0_ptr, c0_ptr,                # (B, H) initial state (c0 lstm only)
    h_prev_ptr, c_prev_ptr,        # (T, B, H) state entering each step; c fp32
    out_ptr, saved_ptr,            # (T, B, H), (T, B, S*H) fp32
    h_n_ptr, c_n_ptr,              # (B, H) final state; c fp32
    lengths_ptr, T, B, H,
    MODE: tl.constexpr, G: tl.constexpr, S: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    HAS_BIAS: tl.constexpr, REVERSE: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows, cols, mask, offs = tile_offsets(B, H, BLOCK_B, BLOCK_H, SPLIT_H=False)
    step_size = tl.cast(B, tl.int64) * H  # elements of one (B, H) step; int64 so long sequences cannot overflow
    h, c = load_state(MODE, h0_ptr, c0_ptr, offs, mask)
    for step in range(0, T):
        t = step
        if REVERSE:
            t = T - 1 - step
        h_prev_t_ptr = h_prev_ptr + t * step_size
        # Record the state entering step t; the product below reads it back.
        tl.store(h_prev_t_ptr + offs, h.to(h_prev_ptr.dtype.element_ty), mask=mask)
        tl.debug_barrier()
        gh0 = recurrent_gate(h_prev_t_ptr, w_hh_ptr, b_hh_ptr, 0, rows, cols, B, H, HAS_BIAS, UPCAST_DOT, BLOCK_B, BLOCK_H, BLOCK_K)
        gh1, gh2, gh3 = gh0 * 0.0, gh0 * 0.0, gh0 * 0.0
        if G > 1:
            gh1 = recurrent_gate(h_prev_t_ptr, w_hh_ptr, b_hh_ptr, 1, rows, cols, B, H, HAS_BIAS,
                                 UPCAST_DOT, BLOCK_B, BLOCK_H, BLOCK_K)
            gh2 = recurrent_gate(h_prev_t_ptr, w_hh_ptr, b_hh_ptr, 2, rows, cols, B, H, HAS_BIAS,
                                 UPCAST_DOT, BLOCK_B, BLOCK_H, BLOCK_K)
        if G > 3:
            gh3 = recurrent_gate(h_prev_t_ptr, w_hh_ptr, b_hh_ptr, 3, rows, cols, B, H, HAS_BIAS,
                                 UPCAST_DOT, BLOCK_B, BLOCK_H, BLOCK_K)
        alive = alive_rows(lengths_ptr, rows, t, B, HAS_LENGTHS)
        h, c = step_forward_pointwise(MODE, G, S, False, h, c, gh0, gh1, gh2, gh3, alive,
                                      gi_ptr + t * step_size * G, h_prev_t_ptr, c_prev_ptr + t * step_size,
                                      out_ptr + t * step_size, saved_ptr + t * step_size * S, rows, cols, mask, H, B,
                                      False, False, False, False, False, False,  # no layer extras (step path only)
                                      gi_ptr, gi_ptr, gi_ptr, gi_ptr, gi_ptr, gi_ptr, gi_ptr, gi_ptr, gi_ptr)
    tl.store(h_n_ptr + offs, h.to(h_n_ptr.dtype.element_ty), mask=mask)
    if MODE == LSTM:
        tl.store(c_n_ptr + offs, c, mask=mask)


@triton.jit
def sequence_backward_kernel(
    grad_out_ptr,                  # (T, B, H)
    grad_h_n_ptr, grad_c_n_ptr,    # (B, H) gradients of the final state (c: lstm only)
    w_hh_ptr,                      # (G*H, H)
    saved_ptr, h_prev_ptr, c_prev_ptr,
    dgh_ptr, dgi_ptr,              # (T, B, G*H) gate gradients out (dgi: gru only)
    grad_h0_ptr, grad_c0_ptr,      # (B, H) fp32 gradients of the initial state out
    lengths_ptr, T, B, H,
    MODE: tl.constexpr, G: tl.constexpr, S: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    REVERSE: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows, cols, mask, offs = tile_offsets(B, H, BLOCK_B, BLOCK_H, SPLIT_H=False)
    step_size = tl.cast(B, tl.int64) * H  # as in the forward
    dh, dc = load_state(MODE, grad_h_n_ptr, grad_c_n_ptr, offs, mask)
    for step in range(0, T):
        # Backward walks the forward processing order backwards.
        t = T - 1 - step
        if REVERSE:
            t = step
        alive = alive_rows(lengths_ptr, rows, t, B, HAS_LENGTHS)
        dgh_t_ptr = dgh_ptr + t * step_size * G
        dh_direct, dc = step_backward_pointwise(MODE, G, S, False, dh, dc, alive,
                                                grad_out_ptr + t * step_size, saved_ptr + t * step_size * S,
                                                h_prev_ptr + t * step_size, c_prev_ptr + t * step_size,
                                                dgh_t_ptr, dgi_ptr + t * step_size * G, rows, cols, mask, H, B,
                                                False, False, False, False, False,  # no layer extras
                                                saved_ptr, saved_ptr, saved_ptr, saved_ptr, saved_ptr, saved_ptr,
                                                saved_ptr, saved_ptr, saved_ptr, saved_ptr)
        tl.debug_barrier()  # dgh_t written by all threads before the product reads it
        dh = dh_direct + gate_grad_product(dgh_t_ptr, w_hh_ptr, rows, cols, B, H, G, UPCAST_DOT, BLOCK_B, BLOCK_H, BLOCK_K)
    tl.store(grad_h0_ptr + offs, dh, mask=mask)
    if MODE == LSTM:
        tl.store(grad_c0_ptr + offs, dc, mask=mask)
