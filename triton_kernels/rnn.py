"""One recurrent layer, one direction, on Triton kernels: forward and backward.

    layer_forward   input projection of all steps (one matmul), then the
                    recurrence on the step path or the sequence path
    layer_backward  the recurrence backwards on either path, then the input
                    and weight gradients as big matmuls
    layer_forward_ext / layer_backward_ext
                    the same with the layer extras (LayerNorm LSTM / GRU,
                    zoneout, every step's c: Extras below, rnn_cells.py),
                    on the step path only; one implementation with the plain
                    entry points (_forward, _backward)

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
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
import triton
from torch import Tensor

from .rnn_cells import MODE_CODES, NUM_GATES, NUM_SAVED
from .rnn_sequence import sequence_backward_kernel, sequence_forward_kernel
from .rnn_step import step_backward_ext_kernel, step_backward_kernel, step_forward_ext_kernel, step_forward_kernel

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


class Extras(NamedTuple):
    """The layer extras of one call (rnnkernels.reference.LayerExtras; no
    projection), as the step kernels take them: tensors contiguous, in x's
    dtype and on its device (validated by rnnkernels/backends/triton.py)."""
    ln_ih: Optional[Tensor] = None       # (G*H,) gain of LN(x W_ih^T)
    ln_hh: Optional[Tensor] = None       # (G*H,) gain of LN(h W_hh^T)
    ln_cell_w: Optional[Tensor] = None   # (H,) lstm: gain and bias of LN(c)
    ln_cell_b: Optional[Tensor] = None
    keep_h: Optional[Tensor] = None      # (T, B, H) zoneout keep factors of h
    keep_c: Optional[Tensor] = None      # (T, B, H) ... and of c (lstm)
    return_cells: bool = False           # lstm: every step's c

    def flags(self, mode: str):
        """The extras constexprs of rnn_step's ext kernels."""
        return dict(LAYER_NORM=self.ln_hh is not None, CELL_NORM=mode == "lstm" and self.ln_cell_w is not None,
                    ZONEOUT_H=self.keep_h is not None, ZONEOUT_C=mode == "lstm" and self.keep_c is not None,
                    RETURN_CELLS=mode == "lstm" and self.return_cells)

    def whole_rows(self) -> bool:
        """Whether a step program must hold whole rows (a LayerNorm's reduction)."""
        return self.ln_hh is not None or self.ln_cell_w is not None


LAYER_NORM_EPS = 1e-5  # rnnkernels.reference.LAYER_NORM_EPS; rnn_cells.LAYER_NORM_EPS in the kernels
# A program of the ext kernels with whole rows holds G fp32 (BLOCK_B, next_pow2(H))
# tiles; rows per program shrink as H grows. Untuned (no GPU measured yet).
ROWS_MAX_ELEMENTS = 4096


def _ext_blocks(B: int, H: int, extras: Extras):
    if not extras.whole_rows():
        return _step_blocks(B, H)
    block_h = triton.next_power_of_2(max(H, 1))
    block_b = max(1, min(STEP_MAX_BLOCK_B, triton.next_power_of_2(max(B, 1)), ROWS_MAX_ELEMENTS // block_h))
    return block_b, block_h, (triton.cdiv(B, block_b), 1)


def layer_forward(mode: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
                  b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
                  lengths: Optional[Tensor], reverse: bool, path: str = "auto"):
    """Returns (out, h_n, c_n, saved, h_prev, c_prev, h_raw); c_n, c_prev are
    empty unless mode is lstm, h_raw (T, B, H: the unprojected h) empty
    without w_hr. Inputs are assumed validated (rnnkernels/backends/triton.py)."""
    return _forward(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, path, None)[:7]


def layer_forward_ext(mode: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
                      b_ih: Optional[Tensor], b_hh: Optional[Tensor], lengths: Optional[Tensor], reverse: bool,
                      extras: Extras):
    """layer_forward with layer extras, always on the step path (the sequence
    kernels take none). Returns (out, h_n, c_n, cell_states, saved, h_prev,
    c_prev, xhat_ih, xhat_hh, row_stats): cell_states (T, B, H) with
    return_cells (else empty); xhat_ih, xhat_hh (T, B, G*H) fp32 with
    LayerNorm, row_stats (T, B, 4) fp32 with any LayerNorm (rnn_cells.py),
    else empty."""
    out, h_n, c_n, saved, h_prev, c_prev, _, cells, xhat_ih, xhat_hh, stats = _forward(
        mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, lengths, reverse, "step", extras)
    return out, h_n, c_n, cells, saved, h_prev, c_prev, xhat_ih, xhat_hh, stats


def _forward(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, path, extras: Optional[Extras]):
    """The layer forward of both entry points: layer_forward's seven results,
    then (cell_states, xhat_ih, xhat_hh, row_stats), empty without extras."""
    T, B, _ = x.shape
    G, S = NUM_GATES[mode], NUM_SAVED[mode]
    H, P = w_hh.shape[0] // G, w_hh.shape[1]  # hidden size; state size (proj_size or H)
    is_lstm, has_proj = mode == "lstm", w_hr is not None
    ext = extras if extras is not None else Extras()
    flags = ext.flags(mode)
    dev, dtype = x.device, x.dtype
    x = _without_padding(x, lengths).contiguous()  # (LN(gi) normalises every row: padding must be finite)
    h0, w_ih, w_hh = h0.contiguous(), w_ih.contiguous(), w_hh.contiguous()
    b_hh = b_hh.contiguous() if b_hh is not None else None
    out = torch.empty(T, B, P, device=dev, dtype=dtype)
    saved = torch.empty(T, B, S * H, device=dev, dtype=torch.float32)
    h_prev = torch.empty(T, B, P, device=dev, dtype=dtype)
    c_prev = torch.empty(T if is_lstm else 0, B, H, device=dev, dtype=torch.float32)
    c_n = torch.empty(B if is_lstm else 0, H, device=dev, dtype=torch.float32)
    h_raw = torch.empty(T if has_proj else 0, B, H, device=dev, dtype=dtype)
    f32 = dict(device=dev, dtype=torch.float32)
    cells = torch.zeros(T if flags["RETURN_CELLS"] else 0, B, H, device=dev, dtype=dtype)
    xhat_ih = torch.zeros(T if ext.ln_ih is not None else 0, B, G * H, **f32)
    xhat_hh = torch.zeros(T if flags["LAYER_NORM"] else 0, B, G * H, **f32)
    stats = torch.zeros(T if ext.whole_rows() or ext.ln_ih is not None else 0, B, 4, **f32)
    ext_results = (cells, xhat_ih, xhat_hh, stats)
    if T == 0 or B == 0:
        c_n = c0.to(torch.float32).clone() if is_lstm else c_n
        return (out, h0.clone(), c_n.to(dtype), saved, h_prev, c_prev, h_raw) + ext_results
    if ext.ln_ih is None:
        gi = F.linear(x, w_ih, b_ih).contiguous()  # (T, B, G*H): the input projection of every step at once
    else:  # gi = ln_ih * LN(x W_ih^T) + b_ih, for all steps at once, in fp32
        gi_hat, _, rstd = torch.native_layer_norm(F.linear(x, w_ih).float(), (G * H,), None, None, LAYER_NORM_EPS)
        xhat_ih.copy_(gi_hat)
        stats[:, :, 3] = rstd.view(T, B)
        gi = gi_hat * ext.ln_ih.float()
        gi = (gi + b_ih.float() if b_ih is not None else gi).to(dtype).contiguous()
    lengths_dev, has_lengths = _lengths_on(lengths, dev)
    consts = dict(MODE=MODE_CODES[mode], G=G, S=S, HAS_LENGTHS=has_lengths)
    # Non-lstm modes have no cell: `unused` stands in for those pointers (never
    # dereferenced), so no kernel gets the null pointer of an empty tensor.
    unused = torch.empty(1, device=dev, dtype=torch.float32)
    c0_f32 = c0.to(torch.float32).contiguous() if is_lstm else unused
    c_prev_arg, c_n_arg = (c_prev, c_n) if is_lstm else (unused, unused)

    if extras is None and choose_path(path, B, H, has_proj) == "sequence":
        h_n = torch.empty(B, H, device=dev, dtype=dtype)
        block_b, block_h, block_k, num_warps, grid = _sequence_blocks(B, H)
        sequence_forward_kernel[grid](
            gi, w_hh, b_hh if b_hh is not None else w_hh, h0, c0_f32, h_prev, c_prev_arg, out, saved, h_n, c_n_arg,
            lengths_dev, T, B, H, HAS_BIAS=b_hh is not None, REVERSE=reverse, UPCAST_DOT=_upcast_dot(dtype),
            BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=block_k, num_warps=num_warps, **consts)
        return (out, h_n, c_n.to(dtype), saved, h_prev, c_prev, h_raw) + ext_results

    h_n = h0.clone()                                    # (B, P) running state, storage dtype
    if is_lstm:
        c_n.copy_(c0_f32)                               # (B, H) running cell, fp32
    gh = torch.empty(B, G * H, device=dev, dtype=dtype)  # (B, G*H) recurrent product of one step
    alive = _alive(lengths, T, dev) if has_proj else None
    block_b, block_h, grid = _step_blocks(B, H) if extras is None else _ext_blocks(B, H, ext)
    steps = range(T - 1, -1, -1) if reverse else range(T)
    if extras is not None:
        def arg(tensor):
            return tensor if tensor is not None else unused
        keep_h, keep_c = arg(ext.keep_h), arg(ext.keep_c)
        for t in steps:
            if flags["LAYER_NORM"]:  # the raw product: the kernel normalises it, then adds b_hh
                torch.mm(h_n, w_hh.t(), out=gh)
            elif b_hh is not None:
                torch.addmm(b_hh, h_n, w_hh.t(), out=gh)
            else:
                torch.mm(h_n, w_hh.t(), out=gh)
            step_forward_ext_kernel[grid](
                gi[t], gh, h_n, c_n_arg, h_prev[t], c_prev[t] if is_lstm else unused, out[t], saved[t],
                arg(b_hh), arg(ext.ln_hh), arg(ext.ln_cell_w), arg(ext.ln_cell_b),
                keep_h[t] if ext.keep_h is not None else unused, keep_c[t] if flags["ZONEOUT_C"] else unused,
                xhat_hh[t] if flags["LAYER_NORM"] else unused, stats[t] if stats.numel() else unused,
                cells[t] if flags["RETURN_CELLS"] else unused,
                lengths_dev, t, B, H, HAS_BIAS=b_hh is not None, BLOCK_B=block_b, BLOCK_H=block_h, **flags,
                **consts)
        return (out, h_n, c_n.to(dtype), saved, h_prev, c_prev, h_raw) + ext_results
    for t in steps:
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
    return (out, h_n, c_n.to(dtype), saved, h_prev, c_prev, h_raw) + ext_results


def layer_backward(mode: str, x: Tensor, w_ih: Tensor, w_hh: Tensor, w_hr: Optional[Tensor], has_bias: bool,
                   lengths: Optional[Tensor], reverse: bool,
                   grad_out: Tensor, grad_h_n: Tensor, grad_c_n: Optional[Tensor],
                   saved: Tensor, h_prev: Tensor, c_prev: Tensor, h_raw: Tensor, path: str = "auto"):
    """Returns (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr); dc0 is None
    unless lstm, the bias gradients None without biases, dw_hr None without w_hr."""
    return _backward(mode, x, w_ih, w_hh, w_hr, has_bias, lengths, reverse, grad_out, grad_h_n, grad_c_n, None,
                     saved, h_prev, c_prev, h_raw, None, None, None, path, None)[:8]


def layer_backward_ext(mode: str, x: Tensor, w_ih: Tensor, w_hh: Tensor, has_bias: bool,
                       lengths: Optional[Tensor], reverse: bool, grad_out: Tensor, grad_h_n: Tensor,
                       grad_c_n: Optional[Tensor], grad_cells: Optional[Tensor], saved: Tensor, h_prev: Tensor,
                       c_prev: Tensor, xhat_ih: Tensor, xhat_hh: Tensor, row_stats: Tensor, extras: Extras):
    """Backward of layer_forward_ext (step path). grad_cells: (T, B, H), the
    gradient of cell_states (return_cells only). Returns (dx, dh0, dc0, dw_ih,
    dw_hh, db_ih, db_hh, d_ln_ih, d_ln_hh, d_ln_cell_w, d_ln_cell_b), None
    for what the layer lacks."""
    grads = _backward(mode, x, w_ih, w_hh, None, has_bias, lengths, reverse, grad_out, grad_h_n, grad_c_n,
                      grad_cells, saved, h_prev, c_prev, None, xhat_ih, xhat_hh, row_stats, "step", extras)
    return grads[:7] + grads[8:]


def _backward(mode, x, w_ih, w_hh, w_hr, has_bias, lengths, reverse, grad_out, grad_h_n, grad_c_n, grad_cells,
              saved, h_prev, c_prev, h_raw, xhat_ih, xhat_hh, row_stats, path, extras: Optional[Extras]):
    """The layer backward of both entry points: layer_backward's eight
    results, then the gradients of (ln_ih, ln_hh, ln_cell_w, ln_cell_b), None
    without them."""
    T, B, I = x.shape
    G, S = NUM_GATES[mode], NUM_SAVED[mode]
    H, P = w_hh.shape[0] // G, w_hh.shape[1]
    is_lstm, has_proj = mode == "lstm", w_hr is not None
    ext = extras if extras is not None else Extras()
    flags = ext.flags(mode)
    dev, dtype = x.device, x.dtype
    x, w_ih, w_hh = _without_padding(x, lengths).contiguous(), w_ih.contiguous(), w_hh.contiguous()
    grad_out, grad_h_n = grad_out.contiguous(), grad_h_n.contiguous()
    # fp32 carried state gradients: dh (B, P), dc (B, H)
    dh = grad_h_n.to(torch.float32).clone()
    unused = torch.empty(1, device=dev, dtype=torch.float32)  # stands in for cell buffers when not lstm
    dc = grad_c_n.to(torch.float32).contiguous().clone() if is_lstm else unused
    dgh = torch.zeros(T, B, G * H, device=dev, dtype=dtype)
    dgi = torch.zeros(T, B, G * H, device=dev, dtype=dtype) if mode == "gru" else dgh
    # With LN(h W_hh^T): the gradient of the raw product, what W_hh and dh see.
    dgh_raw = torch.zeros(T, B, G * H, device=dev, dtype=dtype) if flags["LAYER_NORM"] else dgh
    d_ln_cell = torch.zeros(T if flags["CELL_NORM"] else 0, B, 2 * H, device=dev, dtype=torch.float32)
    d_out = torch.zeros(T if has_proj else 0, B, P, device=dev, dtype=dtype)  # gradient of each projected output
    if T > 0 and B > 0:
        lengths_dev, has_lengths = _lengths_on(lengths, dev)
        consts = dict(MODE=MODE_CODES[mode], G=G, S=S, HAS_LENGTHS=has_lengths)
        backward_steps = range(T) if reverse else range(T - 1, -1, -1)
        if extras is not None:
            block_b, block_h, grid = _ext_blocks(B, H, ext)
            dh_mm = torch.zeros(B, H, device=dev, dtype=dtype)  # (B, H) dgh_raw_{t+1} W_hh
            grad_cells = grad_cells.contiguous() if flags["RETURN_CELLS"] else None

            def at(tensor, t, wanted=True):
                return tensor[t] if wanted and tensor is not None and tensor.numel() else unused

            for t in backward_steps:
                step_backward_ext_kernel[grid](
                    dh, dc, dh_mm, grad_out[t], saved[t], h_prev[t], c_prev[t] if is_lstm else unused,
                    dgh[t], dgi[t], ext.ln_hh if flags["LAYER_NORM"] else unused,
                    ext.ln_cell_w if flags["CELL_NORM"] else unused, ext.ln_cell_b if flags["CELL_NORM"] else unused,
                    at(ext.keep_h, t), at(ext.keep_c, t, flags["ZONEOUT_C"]), at(xhat_hh, t), at(row_stats, t),
                    at(grad_cells, t), dgh_raw[t], at(d_ln_cell, t), lengths_dev, t, B, H,
                    BLOCK_B=block_b, BLOCK_H=block_h, **flags, **consts)
                torch.mm(dgh_raw[t], w_hh, out=dh_mm)
            dh += dh_mm
        elif choose_path(path, B, H, has_proj) == "sequence":
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
    d_ln_ih = d_ln_hh = d_ln_cell_w = d_ln_cell_b = None
    dgi_raw = dgi  # the gradient of x W_ih^T
    if ext.ln_ih is not None:  # back through gi = ln_ih * LN(x W_ih^T) + b_ih, all rows at once, in fp32
        dgi_f = dgi.float()
        d_ln_ih = (dgi_f * xhat_ih).sum((0, 1)).to(dtype)
        dyg = dgi_f * ext.ln_ih.float()
        dgi_raw = (row_stats[:, :, 3:] * (dyg - dyg.mean(-1, keepdim=True)
                                          - xhat_ih * (dyg * xhat_ih).mean(-1, keepdim=True))).to(dtype)
    if flags["LAYER_NORM"]:
        d_ln_hh = (dgh.float() * xhat_hh).sum((0, 1)).to(dtype)
    if flags["CELL_NORM"]:
        sums = d_ln_cell.sum((0, 1)).to(dtype)
        d_ln_cell_w, d_ln_cell_b = sums[:H].clone(), sums[H:].clone()
    dgi_2d, dgh_2d = dgi_raw.reshape(T * B, G * H), dgh_raw.reshape(T * B, G * H)
    dx = torch.matmul(dgi_raw, w_ih)                               # (T, B, I)
    dw_ih = dgi_2d.t().mm(x.reshape(T * B, I))                     # (G*H, I)
    # The state entering a dead step is the frozen final one, which may be
    # legitimately Inf: masked like x, so that 0 * Inf = NaN reaches no weight.
    h_prev, h_raw = _without_padding(h_prev, lengths), _without_padding(h_raw, lengths) if has_proj else h_raw
    dw_hh = dgh_2d.t().mm(h_prev.reshape(T * B, P))                # (G*H, P)
    # The biases' gradients are those of the normalised side (they are added after any LayerNorm).
    db_ih = dgi.reshape(T * B, G * H).sum(0, dtype=torch.float32).to(dtype) if has_bias else None
    db_hh = dgh.reshape(T * B, G * H).sum(0, dtype=torch.float32).to(dtype) if has_bias else None
    dw_hr = d_out.reshape(T * B, P).t().mm(h_raw.reshape(T * B, H)) if has_proj else None  # (P, H)
    return (dx, dh.to(dtype), dc.to(dtype) if is_lstm else None, dw_ih, dw_hh, db_ih, db_hh, dw_hr,
            d_ln_ih, d_ln_hh, d_ln_cell_w, d_ln_cell_b)
