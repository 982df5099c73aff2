"""One recurrent layer, one direction, on Triton kernels: forward and backward.

    layer_forward   input projection of all steps (one matmul), then the
                    recurrence on the step path or the sequence path
    layer_backward  the recurrence backwards on either path, then the input
                    and weight gradients as big matmuls

The two paths write the same saved buffers, so a forward on one path can be
differentiated on the other. Semantics (gate order, lengths, reverse) are
rnnkernels/reference.py's; the math is rnn_cells.py's.

Buffers of one layer (T steps, B batch, I input, H hidden, G gates, S saved):
    gi       (T, B, G*H)  x W_ih^T + b_ih, storage dtype
    h_prev   (T, B, H)    state entering step t, storage dtype
    c_prev   (T, B, H)    cell entering step t, fp32 (lstm; else empty)
    h_raw    (T, B, H)    unprojected h (lstm with proj_size; else empty);
                          h_prev, out and h_n are (.., P) with P = proj_size
    saved    (T, B, S*H)  fp32 activations (rnn_cells.py)
    dgh, dgi (T, B, G*H)  gate gradients, storage dtype (dgi is dgh except for gru)
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
import triton
from torch import Tensor

from .rnn_cells import MODE_CODES, NUM_GATES, NUM_SAVED
from .rnn_sequence import sequence_backward_kernel, sequence_forward_kernel
from .rnn_step import step_backward_kernel, step_forward_kernel

# Path heuristic (choose_path). The sequence kernel saves the two launches per
# step of the step path, but holds G fp32 (BLOCK_B, next_pow2(H)) tiles per
# program in registers (it spills from BLOCK_H 128 on, see _sequence_blocks)
# and runs cdiv(B, 16) programs, i.e. a single SM for B <= 16; the step path's
# per-step cuBLAS GEMM spreads over the whole GPU and wins once the batch or
# H is large enough. These limits are untuned first guesses (no GPU measured
# yet): benchmarks/triton_rnn.py times both paths side by side so the GPU
# playbook can set them.
SEQUENCE_MAX_HIDDEN = 256
SEQUENCE_MAX_BATCH = 64

PATHS = ("auto", "step", "sequence")

# Sequence kernel tiles: rows per program and the K chunk of the tl.dot loop.
SEQUENCE_BLOCK_B = 16
SEQUENCE_BLOCK_K = 32
# Step kernel tile bounds (pointwise, no tl.dot: any power of two works).
STEP_MAX_BLOCK_B = 16
STEP_MAX_BLOCK_H = 128


def choose_path(path: str, batch: int, hidden: int, has_proj: bool = False) -> str:
    """"step" or "sequence" for a layer of this batch and hidden size. LSTM
    projections (proj_size) run on the step path only, whatever `path` says."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if has_proj:
        return "step"
    if path != "auto":
        return path
    return "sequence" if hidden <= SEQUENCE_MAX_HIDDEN and batch <= SEQUENCE_MAX_BATCH else "step"


def _lengths_on(lengths: Optional[Tensor], device) -> Tuple[Tensor, bool]:
    """(lengths as int32 on device, whether there are any); a dummy without."""
    if lengths is None:
        return torch.empty(1, dtype=torch.int32, device=device), False
    return lengths.to(device=device, dtype=torch.int32), True


def _step_blocks(B: int, H: int):
    block_b = min(STEP_MAX_BLOCK_B, triton.next_power_of_2(max(B, 1)))
    block_h = min(STEP_MAX_BLOCK_H, triton.next_power_of_2(max(H, 1)))
    return block_b, block_h, (triton.cdiv(B, block_b), triton.cdiv(H, block_h))


def _sequence_blocks(B: int, H: int):
    block_h = max(16, triton.next_power_of_2(H))
    # More warps for wider state tiles, so the G fp32 (BLOCK_B, BLOCK_H) gate
    # tiles fit in registers. ptxas -v for sm_90 (Triton 3.9) gave the forward
    # kernel's spill stores per thread, lstm fp32: BLOCK_H 64: 412 B (4 warps),
    # 32 B (8); BLOCK_H 128: 368 B (8), 712 B (16); BLOCK_H 256: 3312 B (8),
    # 2064 B (16). Compile-time facts only: speed is for the playbook to time.
    num_warps = 4 if block_h <= 32 else 8 if block_h <= 128 else 16
    return SEQUENCE_BLOCK_B, block_h, SEQUENCE_BLOCK_K, num_warps, (triton.cdiv(B, SEQUENCE_BLOCK_B),)


def _upcast_dot(dtype: torch.dtype) -> bool:
    """The interpreter's tl.dot is wrong for bf16 (see rnn_sequence.py)."""
    return dtype == torch.bfloat16 and type(sequence_forward_kernel).__name__ == "InterpretedFunction"


def _alive(lengths: Optional[Tensor], T: int, device) -> Optional[Tensor]:
    """(T, B, 1) bool on device: step t of sequence b runs; None without lengths."""
    if lengths is None:
        return None
    steps = torch.arange(T, device=device).unsqueeze(1)
    return (steps < lengths.to(device).unsqueeze(0)).unsqueeze(-1)


def _without_padding(x: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """x (T, B, F) with the steps past each sequence's end zeroed: padding may
    hold NaN, and the weight gradients multiply x (and h_raw, computed from it)
    by the zero gate gradients of those steps (0 * NaN = NaN)."""
    alive = _alive(lengths, x.shape[0], x.device)
    return x if alive is None else x.masked_fill(~alive, 0)


def layer_forward(mode: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
                  b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
                  lengths: Optional[Tensor], reverse: bool, path: str = "auto"):
    """Returns (out, h_n, c_n, saved, h_prev, c_prev, h_raw); c_n, c_prev are
    empty unless mode is lstm, h_raw (T, B, H: the unprojected h) empty
    without w_hr. Inputs are assumed validated (rnnkernels/backends/triton.py)."""
    T, B, _ = x.shape
    G, S = NUM_GATES[mode], NUM_SAVED[mode]
    H, P = w_hh.shape[0] // G, w_hh.shape[1]  # hidden size; state size (proj_size or H)
    is_lstm, has_proj = mode == "lstm", w_hr is not None
    dev, dtype = x.device, x.dtype
    x = _without_padding(x, lengths).contiguous()
    h0, w_ih, w_hh = h0.contiguous(), w_ih.contiguous(), w_hh.contiguous()
    b_hh = b_hh.contiguous() if b_hh is not None else None
    out = torch.empty(T, B, P, device=dev, dtype=dtype)
    saved = torch.empty(T, B, S * H, device=dev, dtype=torch.float32)
    h_prev = torch.empty(T, B, P, device=dev, dtype=dtype)
    c_prev = torch.empty(T if is_lstm else 0, B, H, device=dev, dtype=torch.float32)
    c_n = torch.empty(B if is_lstm else 0, H, device=dev, dtype=torch.float32)
    h_raw = torch.empty(T if has_proj else 0, B, H, device=dev, dtype=dtype)
    if T == 0 or B == 0:
        c_n = c0.to(torch.float32).clone() if is_lstm else c_n
        return out, h0.clone(), c_n.to(dtype), saved, h_prev, c_prev, h_raw
    gi = F.linear(x, w_ih, b_ih).contiguous()  # (T, B, G*H): the input projection of every step at once
    lengths_dev, has_lengths = _lengths_on(lengths, dev)
    consts = dict(MODE=MODE_CODES[mode], G=G, S=S, HAS_LENGTHS=has_lengths)
    # Non-lstm modes have no cell: `unused` stands in for those pointers (never
    # dereferenced), so no kernel gets the null pointer of an empty tensor.
    unused = torch.empty(1, device=dev, dtype=torch.float32)
    c0_f32 = c0.to(torch.float32).contiguous() if is_lstm else unused
    c_prev_arg, c_n_arg = (c_prev, c_n) if is_lstm else (unused, unused)

    if choose_path(path, B, H, has_proj) == "sequence":
        h_n = torch.empty(B, H, device=dev, dtype=dtype)
        block_b, block_h, block_k, num_warps, grid = _sequence_blocks(B, H)
        sequence_forward_kernel[grid](
            gi, w_hh, b_hh if b_hh is not None else w_hh, h0, c0_f32, h_prev, c_prev_arg, out, saved, h_n, c_n_arg,
            lengths_dev, T, B, H, HAS_BIAS=b_hh is not None, REVERSE=reverse, UPCAST_DOT=_upcast_dot(dtype),
            BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=block_k, num_warps=num_warps, **consts)
        return out, h_n, c_n.to(dtype), saved, h_prev, c_prev, h_raw

    h_n = h0.clone()                                    # (B, P) running state, storage dtype
    if is_lstm:
        c_n.copy_(c0_f32)                               # (B, H) running cell, fp32
    gh = torch.empty(B, G * H, device=dev, dtype=dtype)  # (B, G*H) recurrent product of one step
    alive = _alive(lengths, T, dev) if has_proj else None
    block_b, block_h, grid = _step_blocks(B, H)
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        if b_hh is not None:
            torch.addmm(b_hh, h_n, w_hh.t(), out=gh)
        else:
            torch.mm(h_n, w_hh.t(), out=gh)
        if not has_proj:
            step_forward_kernel[grid](
                gi[t], gh, h_n, c_n_arg, h_prev[t], c_prev[t] if is_lstm else unused, out[t], saved[t],
                lengths_dev, t, B, H, HAS_PROJ=False, BLOCK_B=block_b, BLOCK_H=block_h, **consts)
            continue
        # Projection: the kernel writes the unprojected h (zero past the end),
        # so its projection is already the step's output.
        h_prev[t].copy_(h_n)
        step_forward_kernel[grid](
            gi[t], gh, h_n, c_n, h_prev[t], c_prev[t], h_raw[t], saved[t],
            lengths_dev, t, B, H, HAS_PROJ=True, BLOCK_B=block_b, BLOCK_H=block_h, **consts)
        torch.mm(h_raw[t], w_hr.t(), out=out[t])
        h_n = out[t].clone() if alive is None else torch.where(alive[t], out[t], h_n)
    return out, h_n, c_n.to(dtype), saved, h_prev, c_prev, h_raw


def layer_backward(mode: str, x: Tensor, w_ih: Tensor, w_hh: Tensor, w_hr: Optional[Tensor], has_bias: bool,
                   lengths: Optional[Tensor], reverse: bool,
                   grad_out: Tensor, grad_h_n: Tensor, grad_c_n: Optional[Tensor],
                   saved: Tensor, h_prev: Tensor, c_prev: Tensor, h_raw: Tensor, path: str = "auto"):
    """Returns (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr); dc0 is None
    unless lstm, the bias gradients None without biases, dw_hr None without w_hr."""
    T, B, I = x.shape
    G, S = NUM_GATES[mode], NUM_SAVED[mode]
    H, P = w_hh.shape[0] // G, w_hh.shape[1]
    is_lstm, has_proj = mode == "lstm", w_hr is not None
    dev, dtype = x.device, x.dtype
    x, w_ih, w_hh = _without_padding(x, lengths).contiguous(), w_ih.contiguous(), w_hh.contiguous()
    grad_out, grad_h_n = grad_out.contiguous(), grad_h_n.contiguous()
    # fp32 carried state gradients: dh (B, P), dc (B, H)
    dh = grad_h_n.to(torch.float32).clone()
    unused = torch.empty(1, device=dev, dtype=torch.float32)  # stands in for cell buffers when not lstm
    dc = grad_c_n.to(torch.float32).contiguous().clone() if is_lstm else unused
    dgh = torch.zeros(T, B, G * H, device=dev, dtype=dtype)
    dgi = torch.zeros(T, B, G * H, device=dev, dtype=dtype) if mode == "gru" else dgh
    d_out = torch.zeros(T if has_proj else 0, B, P, device=dev, dtype=dtype)  # gradient of each projected output
    if T > 0 and B > 0:
        lengths_dev, has_lengths = _lengths_on(lengths, dev)
        consts = dict(MODE=MODE_CODES[mode], G=G, S=S, HAS_LENGTHS=has_lengths)
        backward_steps = range(T) if reverse else range(T - 1, -1, -1)
        if choose_path(path, B, H, has_proj) == "sequence":
            block_b, block_h, block_k, num_warps, grid = _sequence_blocks(B, H)
            dh0 = torch.empty_like(dh)
            dc0 = torch.empty_like(dc)
            sequence_backward_kernel[grid](
                grad_out, dh, dc, w_hh, saved, h_prev, c_prev if is_lstm else unused, dgh, dgi, dh0, dc0,
                lengths_dev, T, B, H, REVERSE=reverse, UPCAST_DOT=_upcast_dot(dtype),
                BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=block_k, num_warps=num_warps, **consts)
            dh, dc = dh0, dc0
        elif not has_proj:
            block_b, block_h, grid = _step_blocks(B, H)
            dh_mm = torch.zeros(B, H, device=dev, dtype=dtype)  # (B, H) dgh_{t+1} W_hh
            for t in backward_steps:
                step_backward_kernel[grid](
                    dh, dc, dh_mm, grad_out[t], saved[t], h_prev[t], c_prev[t] if is_lstm else unused,
                    dgh[t], dgi[t], lengths_dev, t, B, H, HAS_PROJ=False, BLOCK_B=block_b, BLOCK_H=block_h,
                    **consts)
                torch.mm(dgh[t], w_hh, out=dh_mm)
            dh += dh_mm
        else:
            block_b, block_h, grid = _step_blocks(B, H)
            alive = _alive(lengths, T, dev)
            for t in backward_steps:
                if alive is None:
                    dh_total = dh + grad_out[t]  # (B, P) gradient of the state after step t
                    d_out[t] = dh_total          # ... and of the projected output of step t
                else:  # past the end the output is constant zero and the state passes through
                    dh_total = dh + torch.where(alive[t], grad_out[t], 0.0)
                    d_out[t] = torch.where(alive[t], dh_total, 0.0)
                dh_raw = torch.mm(d_out[t], w_hr).float()  # (B, H) gradient of the unprojected h
                step_backward_kernel[grid](
                    dh_raw, dc, dh_raw, grad_out[t], saved[t], h_prev[t], c_prev[t], dgh[t], dgi[t],
                    lengths_dev, t, B, H, HAS_PROJ=True, BLOCK_B=block_b, BLOCK_H=block_h, **consts)
                dh = torch.mm(dgh[t], w_hh).float()
                if alive is not None:  # an ended sequence's state passes its gradient through
                    dh += torch.where(alive[t], 0.0, dh_total)
    # Input and weight gradients: big matmuls over all steps at once.
    dgi_2d, dgh_2d = dgi.reshape(T * B, G * H), dgh.reshape(T * B, G * H)
    dx = torch.matmul(dgi, w_ih)                                   # (T, B, I)
    dw_ih = dgi_2d.t().mm(x.reshape(T * B, I))                     # (G*H, I)
    # The state entering a dead step is the frozen final one, which may be
    # legitimately Inf: masked like x, so that 0 * Inf = NaN reaches no weight.
    h_prev, h_raw = _without_padding(h_prev, lengths), _without_padding(h_raw, lengths) if has_proj else h_raw
    dw_hh = dgh_2d.t().mm(h_prev.reshape(T * B, P))                # (G*H, P)
    db_ih = dgi_2d.sum(0, dtype=torch.float32).to(dtype) if has_bias else None
    db_hh = dgh_2d.sum(0, dtype=torch.float32).to(dtype) if has_bias else None
    dw_hr = d_out.reshape(T * B, P).t().mm(h_raw.reshape(T * B, H)) if has_proj else None  # (P, H)
    return dx, dh.to(dtype), dc.to(dtype) if is_lstm else None, dw_ih, dw_hh, db_ih, db_hh, dw_hr
