"""Random arguments of the extended layer op (LayerNorm, zoneout, cell
states) that its tests on every backend share:
(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, extras)."""
import torch

from rnnkernels.reference import GATES, LayerExtras


def random_layer_args(mode, ln=False, ln_c=False, zh=None, zc=None, cells=False, lengths=None, reverse=False,
                      with_h0=True, bias=True, T=5, B=4, I=3, H=6, eval_zoneout=False, generator=None,
                      dtype=torch.float64, weight_scale=0.5, float32_values=False, requires_grad=True):
    """Every tensor drawn in float64 from `generator` (default: seed 0), in the
    same order on every backend: entries of standard deviation 0.5 (the
    weights' `weight_scale`), gains around 1. float32_values: rounded to
    float32 first, so that float32 kernels see exactly the float64
    reference's inputs. Zoneout masks are Bernoulli(p) draws, or p itself
    with eval_zoneout. Then in `dtype`, leaves requiring grad if asked."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    G = GATES[mode]

    def finish(value):
        if float32_values:
            value = value.float().double()
        value = value.to(dtype)
        return value.requires_grad_() if requires_grad else value

    def rand(*shape, offset=0.0, scale=0.5):
        return finish(torch.randn(*shape, dtype=torch.float64, generator=gen) * scale + offset)

    def keep(p):
        if p is None:
            return None
        full = torch.full((T, B, H), p, dtype=torch.float64)
        return (full if eval_zoneout else torch.bernoulli(full, generator=gen)).to(dtype)

    x = rand(T, B, I)
    h0 = rand(B, H) if with_h0 else None
    c0 = rand(B, H) if with_h0 and mode == "lstm" else None
    w_ih, w_hh = rand(G * H, I, scale=weight_scale), rand(G * H, H, scale=weight_scale)
    b_ih, b_hh = (rand(G * H), rand(G * H)) if bias else (None, None)
    extras = LayerExtras(rand(G * H, offset=1.0) if ln else None, rand(G * H, offset=1.0) if ln else None,
                         rand(H, offset=1.0) if ln_c else None, rand(H) if ln_c else None, keep(zh), keep(zc), cells)
    lengths = torch.tensor(lengths, dtype=torch.int64) if lengths is not None else None
    return [mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, extras]
