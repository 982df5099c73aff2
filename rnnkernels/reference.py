"""Pure-PyTorch reference of one recurrent layer in one direction.

This is the semantics every kernel is checked against. Gate formulas, gate
order and weight layout are torch.nn's:

    rnn_tanh  h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh)
    rnn_relu  h' = relu(x W_ih^T + b_ih + h W_hh^T + b_hh)
    lstm      i, f, g, o = chunk(x W_ih^T + b_ih + h W_hh^T + b_hh, 4)
              c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
              h' = sigmoid(o) * tanh(c')          (then h' W_hr^T with proj_size)
    gru       r, z, n from x W_ih^T + b_ih (gi) and h W_hh^T + b_hh (gh):
              r = sigmoid(gi_r + gh_r); z = sigmoid(gi_z + gh_z)
              n = tanh(gi_n + r * gh_n); h' = (1 - z) * n + z * h

Variable lengths: with `lengths[b] = L`, steps t >= L leave sequence b's state
untouched and write zeros to the output. Walking t = T-1 .. 0 for the reverse
direction therefore starts each sequence at its own last step L-1 with h0.

Shapes (one layer, one direction; H hidden, P = proj_size or H, G gates):
    x        (T, B, I)       time-major input
    h0       (B, P)          c0 (B, H) for lstm, else None
    w_ih     (G*H, I)        w_hh (G*H, P)
    b_ih     (G*H,) or None  b_hh (G*H,) or None
    w_hr     (P, H) or None  lstm only
    lengths  (B,) int64 on CPU, or None (all sequences have length T)
    returns  out (T, B, P), h_n (B, P), c_n (B, H) or None
"""
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

MODES = ("rnn_tanh", "rnn_relu", "lstm", "gru")
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}


def rnn_tanh_cell(gi: Tensor, gh: Tensor, h: Tensor) -> Tensor:
    return torch.tanh(gi + gh)


def rnn_relu_cell(gi: Tensor, gh: Tensor, h: Tensor) -> Tensor:
    return torch.relu(gi + gh)


def lstm_cell(gi: Tensor, gh: Tensor, c: Tensor) -> Tuple[Tensor, Tensor]:
    """Returns (h before projection, c)."""
    i, f, g, o = (gi + gh).chunk(4, dim=-1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c_new), c_new


def gru_cell(gi: Tensor, gh: Tensor, h: Tensor) -> Tensor:
    gi_r, gi_z, gi_n = gi.chunk(3, dim=-1)
    gh_r, gh_z, gh_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(gi_r + gh_r)
    z = torch.sigmoid(gi_z + gh_z)
    n = torch.tanh(gi_n + r * gh_n)
    return (1 - z) * n + z * h


def rnn_layer(
    mode: str,
    x: Tensor,
    h0: Tensor,
    c0: Optional[Tensor],
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    w_hr: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    reverse: bool = False,
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """One layer, one direction; see the module docstring for shapes."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    T = x.shape[0]
    alive = None
    if lengths is not None:
        steps = torch.arange(T, device=x.device).unsqueeze(1)  # (T, 1)
        alive = (steps < lengths.to(x.device).unsqueeze(0)).unsqueeze(-1)  # (T, B, 1)
        # Nothing past a sequence's end may reach an output or a gradient. The
        # torch.where below passes no gradient to a dead step's h_new, but the
        # weight gradients of that step would still multiply its zero gate
        # gradients by its inputs: 0 * NaN = NaN for padding holding NaN or
        # Inf (or torch.empty's garbage), and for a state that is legitimately
        # Inf at the sequence's end. So dead steps see zeros: x here, the
        # state below.
        x = x.masked_fill(~alive, 0)
    gi_all = F.linear(x, w_ih, b_ih)  # (T, B, G*H): input projection of all steps at once
    h, c = h0, c0
    outputs = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        h_in, c_in = h, c
        if alive is not None:
            h_in = h.masked_fill(~alive[t], 0)
            c_in = c.masked_fill(~alive[t], 0) if c is not None else None
        gh = F.linear(h_in, w_hh, b_hh)
        if mode == "lstm":
            h_new, c_new = lstm_cell(gi_all[t], gh, c_in)
            if w_hr is not None:
                h_new = F.linear(h_new, w_hr)
        elif mode == "gru":
            h_new, c_new = gru_cell(gi_all[t], gh, h_in), None
        elif mode == "rnn_tanh":
            h_new, c_new = rnn_tanh_cell(gi_all[t], gh, h_in), None
        else:
            h_new, c_new = rnn_relu_cell(gi_all[t], gh, h_in), None
        if alive is None:
            h, c = h_new, c_new
            outputs[t] = h
        else:
            h = torch.where(alive[t], h_new, h)
            if c is not None:
                c = torch.where(alive[t], c_new, c)
            outputs[t] = torch.where(alive[t], h_new, torch.zeros_like(h_new))
    if T == 0:
        out = x.new_zeros((0, x.shape[1], h0.shape[-1]))
    else:
        out = torch.stack(outputs, 0)
    return out, h, c


class LayerExtras(NamedTuple):
    """What a layer adds to torch.nn's cell (every field optional; no proj_size).

    ln_ih_weight, ln_hh_weight  (G*H,)  LayerNorm gains of x W_ih^T and h W_hh^T
                                        (lstm, gru; both or neither)
    ln_cell_weight, ln_cell_bias (H,)   lstm: h = o * tanh(LN(c))
    keep_h, keep_c  (T, B, H)           zoneout: state = keep * previous + (1 - keep) * fresh
                                        (Bernoulli(p) draws in training, p in evaluation)
    return_cells                        lstm: every step's c, zero past each sequence's end
    """
    ln_ih_weight: Optional[Tensor] = None
    ln_hh_weight: Optional[Tensor] = None
    ln_cell_weight: Optional[Tensor] = None
    ln_cell_bias: Optional[Tensor] = None
    keep_h: Optional[Tensor] = None
    keep_c: Optional[Tensor] = None
    return_cells: bool = False


LAYER_NORM_EPS = 1e-5


def _layer_norm(v: Tensor, weight: Optional[Tensor], bias: Optional[Tensor] = None) -> Tensor:
    return F.layer_norm(v, v.shape[-1:], weight, bias, LAYER_NORM_EPS)


def rnn_layer_extended(
    mode: str,
    x: Tensor,
    h0: Optional[Tensor],
    c0: Optional[Tensor],
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    lengths: Optional[Tensor],
    reverse: bool,
    extras: LayerExtras,
) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
    """rnn_layer with `extras` (LayerNorm LSTM/GRU as Ba et al. 2016 and
    Haste, zoneout, every step's cell state); returns (out, h_n, c_n,
    cell_states or None). The semantics the cpu backend is checked against:

    LayerNorm LSTM  gates = LN(x W_ih^T; g_ih) + LN(h W_hh^T; g_hh) + b_ih + b_hh
                    c' = sig(f) c + sig(i) tanh(g);  h' = sig(o) tanh(LN(c'; g_c, b_c))
    LayerNorm GRU   gi = LN(x W_ih^T; g_ih) + b_ih;  gh = LN(h W_hh^T; g_hh) + b_hh; then gru_cell
    zoneout         c = k_c c_prev + (1 - k_c) c';  h = k_h h_prev + (1 - k_h) h'  (h' from c', not c)
    Past a sequence's end the state stays frozen, outputs and cell states are
    zero, and nothing there (padding included) reaches any gradient.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    T = x.shape[0]
    if h0 is None:  # zeros, as the kernels take them
        h0 = x.new_zeros(x.shape[1], w_hh.shape[1])
    if c0 is None and mode == "lstm":
        c0 = torch.zeros_like(h0)
    alive = None
    if lengths is not None:
        steps = torch.arange(T, device=x.device).unsqueeze(1)
        alive = (steps < lengths.to(x.device).unsqueeze(0)).unsqueeze(-1)  # (T, B, 1)
        x = x.masked_fill(~alive, 0)  # padding never reaches a gradient, whatever it holds
    gi_all = F.linear(x, w_ih)
    if extras.ln_ih_weight is not None:
        gi_all = _layer_norm(gi_all, extras.ln_ih_weight)
    if b_ih is not None:
        gi_all = gi_all + b_ih
    h, c = h0, c0
    outputs, cell_outputs = [None] * T, [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        gh = F.linear(h, w_hh)
        if extras.ln_hh_weight is not None:
            gh = _layer_norm(gh, extras.ln_hh_weight)
        if b_hh is not None:
            gh = gh + b_hh
        c_new = None
        if mode == "lstm":
            i, f, g, o = (gi_all[t] + gh).chunk(4, dim=-1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            y = c_new if extras.ln_cell_weight is None else _layer_norm(c_new, extras.ln_cell_weight,
                                                                          extras.ln_cell_bias)
            h_new = torch.sigmoid(o) * torch.tanh(y)
            if extras.keep_c is not None:
                c_new = extras.keep_c[t] * c + (1 - extras.keep_c[t]) * c_new
        elif mode == "gru":
            h_new = gru_cell(gi_all[t], gh, h)
        elif mode == "rnn_tanh":
            h_new = rnn_tanh_cell(gi_all[t], gh, h)
        else:
            h_new = rnn_relu_cell(gi_all[t], gh, h)
        if extras.keep_h is not None:
            h_new = extras.keep_h[t] * h + (1 - extras.keep_h[t]) * h_new
        if alive is None:
            h, c = h_new, c_new
            outputs[t], cell_outputs[t] = h, c
        else:
            h = torch.where(alive[t], h_new, h)
            if c is not None:
                c = torch.where(alive[t], c_new, c)
                cell_outputs[t] = torch.where(alive[t], c_new, torch.zeros_like(c_new))
            outputs[t] = torch.where(alive[t], h_new, torch.zeros_like(h_new))
    out = torch.stack(outputs, 0)
    cell_states = torch.stack(cell_outputs, 0) if extras.return_cells else None
    return out, h, c, cell_states
