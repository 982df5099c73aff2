"""Step path: one fused pointwise Triton kernel per time step, paired with a
torch matmul (cuBLAS on GPU) for the recurrent product of that step.

Forward, per step t (in processing order):
    gh_t = h W_hh^T + b_hh                   torch.addmm      (B, G*H)
    step_forward_kernel                      gates, state update, output,
                                             saved activations (rnn_cells.py)
Backward, per step t (reverse processing order):
    step_backward_kernel                     dgh_t, dgi_t, carried dh, dc
    dh_mm = dgh_t W_hh                       torch.mm         (B, H)
The input projection and the weight gradients are big matmuls in rnn.py.

HAS_PROJ (lstm with proj_size): the kernels see the unprojected h (B, H)
only; the projection h_raw W_hr^T and the (B, P) state live on the host side
(rnn.py), so these kernels never touch h_ptr / dh_mm_ptr then.

step_forward_ext_kernel / step_backward_ext_kernel: the same steps with the
layer extras of rnn_cells.py (LayerNorm of h W_hh^T and of c, zoneout, cell
outputs; no projection). Separate kernels, so that the plain ones keep their
argument lists (launch cost) and compile exactly as before; both run the
same pointwise bodies. With LAYER_NORM the host's product has no bias
(b_hh is added after the norm) and, in backward, dh_mm is dgh_raw W_hh.
LAYER_NORM and CELL_NORM need a whole row per program: BLOCK_H >= H.
"""
import triton
import triton.language as tl

from .rnn_cells import LSTM, alive_rows, load_gates, step_backward_pointwise, step_forward_pointwise, tile_offsets


@triton.jit(do_not_specialize=["t"])  # t changes every step: one compiled kernel for all
def step_forward_kernel(
    gi_t_ptr, gh_t_ptr,            # (B, G*H) input / recurrent gate pre-activations of step t
    h_ptr, c_ptr,                  # (B, H) running state: h storage dtype (read, then overwritten), c fp32
    h_prev_t_ptr, c_prev_t_ptr,    # (B, H) record of the state entering step t
    out_t_ptr, saved_t_ptr,        # (B, H) output of step t (HAS_PROJ: unprojected); (B, S*H) fp32 saved activations
    lengths_ptr, t, B, H,
    MODE: tl.constexpr, G: tl.constexpr, S: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_PROJ: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows, cols, mask, offs = tile_offsets(B, H, BLOCK_B, BLOCK_H, SPLIT_H=True)
    alive = alive_rows(lengths_ptr, rows, t, B, HAS_LENGTHS)
    h = tl.full((BLOCK_B, BLOCK_H), 0.0, tl.float32)
    if not HAS_PROJ:
        h = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    c = h * 0.0
    if MODE == LSTM:
        c = tl.load(c_ptr + offs, mask=mask, other=0.0)
    gh0, gh1, gh2, gh3 = load_gates(gh_t_ptr, rows, cols, mask, H, G)
    h, c = step_forward_pointwise(MODE, G, S, HAS_PROJ, h, c, gh0, gh1, gh2, gh3, alive,
                                  gi_t_ptr, h_prev_t_ptr, c_prev_t_ptr, out_t_ptr, saved_t_ptr,
                                  rows, cols, mask, H, B,
                                  False, False, False, False, False, False,  # no layer extras
                                  gi_t_ptr, gi_t_ptr, gi_t_ptr, gi_t_ptr, gi_t_ptr, gi_t_ptr, gi_t_ptr, gi_t_ptr,
                                  gi_t_ptr)
    if not HAS_PROJ:
        tl.store(h_ptr + offs, h.to(h_ptr.dtype.element_ty), mask=mask)
    if MODE == LSTM:
        tl.store(c_ptr + offs, c, mask=mask)


@triton.jit(do_not_specialize=["t"])  # t changes every step: one compiled kernel for all
def step_backward_kernel(
    dh_ptr, dc_ptr,                # (B, H) fp32 carried gradients of the state after step t (updated in place;
                                   # HAS_PROJ: dh_ptr is the unprojected h's gradient, read only)
    dh_mm_ptr,                     # (B, H) dgh_{t+1} W_hh from the previous backward step (storage dtype)
    grad_out_t_ptr,                # (B, H) gradient of the output of step t
    saved_t_ptr, h_prev_t_ptr, c_prev_t_ptr,
    dgh_t_ptr, dgi_t_ptr,          # (B, G*H) gate gradients out
    lengths_ptr, t, B, H,
    MODE: tl.constexpr, G: tl.constexpr, S: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_PROJ: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows, cols, mask, offs = tile_offsets(B, H, BLOCK_B, BLOCK_H, SPLIT_H=True)
    alive = alive_rows(lengths_ptr, rows, t, B, HAS_LENGTHS)
    dh = tl.load(dh_ptr + offs, mask=mask, other=0.0)
    if not HAS_PROJ:
        dh += tl.load(dh_mm_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dc = dh * 0.0
    if MODE == LSTM:
        dc = tl.load(dc_ptr + offs, mask=mask, other=0.0)
    dh, dc = step_backward_pointwise(MODE, G, S, HAS_PROJ, dh, dc, alive,
                                     grad_out_t_ptr, saved_t_ptr, h_prev_t_ptr, c_prev_t_ptr, dgh_t_ptr, dgi_t_ptr,
                                     rows, cols, mask, H, B,
                                     False, False, False, False, False,  # no layer extras
                                     saved_t_ptr, saved_t_ptr, saved_t_ptr, saved_t_ptr, saved_t_ptr, saved_t_ptr,
                                     saved_t_ptr, saved_t_ptr, saved_t_ptr, saved_t_ptr)
    if not HAS_PROJ:
        tl.store(dh_ptr + offs, dh, mask=mask)
    if MODE == LSTM:
        tl.store(dc_ptr + offs, dc, mask=mask)


@triton.jit(do_not_specialize=["t"])
def step_forward_ext_kernel(
    gi_t_ptr, gh_t_ptr, h_ptr, c_ptr, h_prev_t_ptr, c_prev_t_ptr, out_t_ptr, saved_t_ptr,  # as step_forward_kernel
    b_hh_ptr, ln_hh_ptr, ln_c_w_ptr, ln_c_b_ptr,  # (G*H,) bias and gain of LN(h W_hh^T); (H,) gain, bias of LN(c)
    keep_h_t_ptr, keep_c_t_ptr,   # (B, H) zoneout keep factors of step t (storage dtype)
    xhat_hh_t_ptr, stats_t_ptr,   # (B, G*H), (B, 4) fp32 saved for backward
    cells_t_ptr,                  # (B, H) c after step t (storage dtype)
    lengths_ptr, t, B, H,
    MODE: tl.constexpr, G: tl.constexpr, S: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_BIAS: tl.constexpr,
    LAYER_NORM: tl.constexpr, CELL_NORM: tl.constexpr, ZONEOUT_H: tl.constexpr, ZONEOUT_C: tl.constexpr,
    RETURN_CELLS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows, cols, mask, offs = tile_offsets(B, H, BLOCK_B, BLOCK_H, SPLIT_H=True)
    alive = alive_rows(lengths_ptr, rows, t, B, HAS_LENGTHS)
    h = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    c = h * 0.0
    if MODE == LSTM:
        c = tl.load(c_ptr + offs, mask=mask, other=0.0)
    gh0, gh1, gh2, gh3 = load_gates(gh_t_ptr, rows, cols, mask, H, G)
    h, c = step_forward_pointwise(MODE, G, S, False, h, c, gh0, gh1, gh2, gh3, alive,
                                  gi_t_ptr, h_prev_t_ptr, c_prev_t_ptr, out_t_ptr, saved_t_ptr,
                                  rows, cols, mask, H, B,
                                  LAYER_NORM, CELL_NORM, ZONEOUT_H, ZONEOUT_C, RETURN_CELLS, HAS_BIAS,
                                  b_hh_ptr, ln_hh_ptr, ln_c_w_ptr, ln_c_b_ptr, keep_h_t_ptr, keep_c_t_ptr,
                                  xhat_hh_t_ptr, stats_t_ptr, cells_t_ptr)
    tl.store(h_ptr + offs, h.to(h_ptr.dtype.element_ty), mask=mask)
    if MODE == LSTM:
        tl.store(c_ptr + offs, c, mask=mask)


@triton.jit(do_not_specialize=["t"])
def step_backward_ext_kernel(
    dh_ptr, dc_ptr, dh_mm_ptr, grad_out_t_ptr, saved_t_ptr, h_prev_t_ptr, c_prev_t_ptr,  # as step_backward_kernel
    dgh_t_ptr, dgi_t_ptr,
    ln_hh_ptr, ln_c_w_ptr, ln_c_b_ptr, keep_h_t_ptr, keep_c_t_ptr, xhat_hh_t_ptr, stats_t_ptr,  # as the forward's
    grad_cells_t_ptr,             # (B, H) gradient of the cell output of step t
    dgh_raw_t_ptr,                # (B, G*H) gradient of the raw h W_hh^T (LAYER_NORM)
    d_ln_cell_t_ptr,              # (B, 2H) fp32 per-row terms of LN(c)'s gain and bias gradients
    lengths_ptr, t, B, H,
    MODE: tl.constexpr, G: tl.constexpr, S: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    LAYER_NORM: tl.constexpr, CELL_NORM: tl.constexpr, ZONEOUT_H: tl.constexpr, ZONEOUT_C: tl.constexpr,
    RETURN_CELLS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows, cols, mask, offs = tile_offsets(B, H, BLOCK_B, BLOCK_H, SPLIT_H=True)
    alive = alive_rows(lengths_ptr, rows, t, B, HAS_LENGTHS)
    dh = tl.load(dh_ptr + offs, mask=mask, other=0.0) + tl.load(dh_mm_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dc = dh * 0.0
    if MODE == LSTM:
        dc = tl.load(dc_ptr + offs, mask=mask, other=0.0)
    dh, dc = step_backward_pointwise(MODE, G, S, False, dh, dc, alive,
                                     grad_out_t_ptr, saved_t_ptr, h_prev_t_ptr, c_prev_t_ptr, dgh_t_ptr, dgi_t_ptr,
                                     rows, cols, mask, H, B,
                                     LAYER_NORM, CELL_NORM, ZONEOUT_H, ZONEOUT_C, RETURN_CELLS,
                                     ln_hh_ptr, ln_c_w_ptr, ln_c_b_ptr, keep_h_t_ptr, keep_c_t_ptr,
                                     xhat_hh_t_ptr, stats_t_ptr, grad_cells_t_ptr, dgh_raw_t_ptr, d_ln_cell_t_ptr)
    tl.store(dh_ptr + offs, dh, mask=mask)
    if MODE == LSTM:
        tl.store(dc_ptr + offs, dc, mask=mask)
