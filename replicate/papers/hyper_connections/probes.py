"""What the figures measure on the residual mixing matrices H_res of a trained model.

All functions take per-token matrices (..., n, n) and average over the tokens (the leading dims)
where a token-level number is asked, as mHC Fig. 3 does ("averaged over all tokens").

* ``composite(res)``: P_l = H_l H_{l-1} ... H_1 for l = 1..L (x_{l+1} = H_l x_l on the residual
  path, so P_l maps the streams entering the first layer to those leaving layer l; P_L is mHC's
  composite mapping prod_{i=1}^{L} H_{L-i}).
* ``amax_gain``: mHC's "Amax Gain Magnitude" (Sec. 3.1): the largest absolute row sum (forward
  signal) and the largest absolute column sum (backward gradient) of a mapping.
* ``doubly_stochastic_error``: the largest |row sum - 1| or |column sum - 1|.
* ``identity_distance``: ||H - I||_F; ``negative_share``: the share of entries below zero
  (sHC's "identity degeneration" and "subtractive mixing").
"""

from __future__ import annotations

import torch

from replicate.papers.hyper_connections.connections import sinkhorn_knopp


def composite(res: list[torch.Tensor]) -> list[torch.Tensor]:
    """The composite mappings P_1 .. P_L of the per-layer matrices ``res`` (each (..., n, n))."""
    out, p = [], None
    for h in res:
        p = h if p is None else h @ p
        out.append(p)
    return out


def amax_gain(m: torch.Tensor) -> tuple[float, float]:
    """(forward, backward) gain: token means of max_i sum_j |m_ij| and max_j sum_i |m_ij|."""
    a = m.abs()
    return float(a.sum(-1).amax(-1).mean()), float(a.sum(-2).amax(-1).mean())


def doubly_stochastic_error(m: torch.Tensor) -> float:
    """Token mean of max(|m 1 - 1|_inf, |1^T m - 1|_inf)."""
    rows = (m.sum(-1) - 1).abs().amax(-1)
    cols = (m.sum(-2) - 1).abs().amax(-1)
    return float(torch.maximum(rows, cols).mean())


def identity_distance(m: torch.Tensor) -> float:
    """Token mean of ||m - I||_F."""
    eye = torch.eye(m.shape[-1], dtype=m.dtype)
    return float(torch.linalg.matrix_norm(m - eye).mean())


def negative_share(m: torch.Tensor) -> float:
    """Share of the entries of m (over tokens) that are below zero."""
    return float((m < 0).double().mean())


def spectral_norm(m: torch.Tensor) -> float:
    """Token mean of the largest singular value."""
    return float(torch.linalg.matrix_norm(m.double(), ord=2).mean())


def layer_table(res: list[torch.Tensor]) -> dict[str, list[float]]:
    """Per layer l (one list entry each): the single matrix's and the composite P_l's gains,
    errors, spectral norm, identity distance and negative share."""
    out: dict[str, list[float]] = {}
    for single, comp in zip(res, composite(res)):
        for name, m in (("layer", single), ("composite", comp)):
            fwd, bwd = amax_gain(m)
            for key, value in (("gain_forward", fwd), ("gain_backward", bwd),
                               ("ds_error", doubly_stochastic_error(m)),
                               ("spectral_norm", spectral_norm(m)),
                               ("identity_distance", identity_distance(m)),
                               ("negative_share", negative_share(m))):
                out.setdefault(f"{name}_{key}", []).append(value)
    return out


def sinkhorn_sweep(logits: list[torch.Tensor], iters: list[int]) -> dict[str, list[list[float]]]:
    """mHC-lite's claim (i): the doubly stochastic error of Sinkhorn-Knopp after t iterations, per
    layer and for the composite through all layers, from each layer's learned logits (..., n, n),
    in the logits' precision (as the model runs it). ``layer[i][l]`` and ``composite[i][l]`` are
    those errors at t = ``iters[i]`` and layer l."""
    layer, comp = [], []
    for t in iters:
        res = [sinkhorn_knopp(z, t) for z in logits]
        layer.append([doubly_stochastic_error(m) for m in res])
        comp.append([doubly_stochastic_error(m) for m in composite(res)])
    return {"iters": list(iters), "layer": layer, "composite": comp}
