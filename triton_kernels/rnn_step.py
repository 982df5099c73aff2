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
                                  rows, cols, mask, H)
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
                                     rows, cols, mask, H)
    if not HAS_PROJ:
        tl.store(dh_ptr + offs, dh, mask=mask)
    if MODE == LSTM:
        tl.store(dc_ptr + offs, dc, mask=mask)
