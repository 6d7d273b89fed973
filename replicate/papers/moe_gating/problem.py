"""The simulation study: a true MoE, the fits (replicates x sample sizes), data and initialisation.

Our choices where the papers' appendix setups could not be confirmed (stated in every config):
X ~ Uniform(0, 1)^d i.i.d. (random design; the sister paper used an evenly spaced grid), one
independent sample per (replicate, n), and the initialisation of the papers' simulations as far
as it is known: near the truth with noise that shrinks with n, here truth + N(0, scale * n^-rate)
on w1, w0, a, b and a log-normal factor exp(N(0, scale * n^-rate)) on var and tau (keeps them
positive). ``rate = 0`` is the fixed-noise control the issue asks for. The estimator can also
start from the data alone (fit.py, ``init="data"``).

An over-specified fit has more atoms than the truth: ``atoms[i]`` names the true expert that
fitted atom ``i`` starts from. Atoms that split one true expert start from its parameters with
gate intercept w0 - log(multiplicity), so for a dense gate the split model is the true density.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from replicate.papers.moe_gating import model as M
from replicate.papers.moe_gating.fit import DTYPE, generator


def _rows(name: str, values, k: int) -> list[list[float]]:
    """Per-expert vectors: floats (d = 1) or lists of d floats."""
    rows = [list(v) if isinstance(v, (list, tuple)) or hasattr(v, "__len__") else [v] for v in values]
    if len(rows) != k or len({len(r) for r in rows}) != 1:
        raise ValueError(f"truth: {name} must hold {k} entries of one length (d), got {values}")
    return [[float(c) for c in r] for r in rows]


@dataclass
class Truth:
    """The true MoE (config ``truth``): per-expert lists, the last expert's gate entries 0.
    ``w1`` and ``a`` hold floats (d = 1) or lists of d floats; ``rank`` is the top-K ranking
    (model.py: "logit" or the paper's "slope")."""

    gate: str
    w1: list
    w0: list[float]
    a: list
    b: list[float]
    sigma: list[float]
    tau: float = 1.0
    top_k: int | None = None
    rank: str = "logit"
    name: str = ""

    def __post_init__(self):
        k = len(self.w0)
        if not all(len(v) == k for v in (self.w1, self.a, self.b, self.sigma)):
            raise ValueError(f"truth: w1, w0, a, b, sigma must all have {k} entries")
        self._w1, self._a = _rows("w1", self.w1, k), _rows("a", self.a, k)
        if len(self._w1[0]) != len(self._a[0]):
            raise ValueError(f"truth: w1 and a must have the same dimension d, got {len(self._w1[0])} and {len(self._a[0])}")
        if any(self._w1[-1]) or self.w0[-1] != 0:
            raise ValueError("truth: the last expert's gate parameters must be 0 (identifiability)")
        if min(self.sigma) <= 0 or self.tau <= 0:
            raise ValueError("truth: sigma and tau must be positive")
        self.spec = M.Gate(self.gate, self.top_k, self.rank)

    @property
    def k(self) -> int:
        return len(self.w0)

    @property
    def d(self) -> int:
        return len(self._w1[0])

    def params(self, n_fits: int = 1) -> dict:
        """The truth as a parameter dict repeated for ``n_fits`` fits."""
        p = {"w1": torch.tensor(self._w1, dtype=DTYPE).repeat(n_fits, 1, 1),
             "a": torch.tensor(self._a, dtype=DTYPE).repeat(n_fits, 1, 1)}
        for key, v in (("w0", self.w0), ("b", self.b), ("var", [s ** 2 for s in self.sigma])):
            p[key] = torch.tensor(v, dtype=DTYPE).repeat(n_fits, 1)
        p["tau"] = torch.full((n_fits,), float(self.tau), dtype=DTYPE)
        return p


@dataclass
class Design:
    """Which fits a run holds: ``replicates`` x ``n_grid``, fit id = replicate * len(n_grid) + j."""

    n_grid: list[int]
    replicates: int
    seed: int = 0
    sizes: torch.Tensor = field(init=False)

    def __post_init__(self):
        if self.replicates < 1 or not self.n_grid or min(self.n_grid) < 10:
            raise ValueError(f"design: need replicates >= 1 and every n >= 10, got "
                             f"replicates={self.replicates}, n_grid={self.n_grid}")
        self.sizes = torch.tensor(self.n_grid * self.replicates, dtype=torch.long)

    @property
    def n_fits(self) -> int:
        return len(self.n_grid) * self.replicates

    def fits(self):
        """(fit id, replicate, n) of every fit, in fit-id order."""
        for r in range(self.replicates):
            for j, n in enumerate(self.n_grid):
                yield r * len(self.n_grid) + j, r, n


def simulate(truth: Truth, design: Design) -> dict[str, torch.Tensor]:
    """Flat data of every fit: x (N, d), y (N,) (float64) and fit (long), sorted by fit id."""
    xs, ys, fits = [], [], []
    for fid, r, n in design.fits():
        g = generator("data", design.seed, r, n)
        x = torch.rand(n, truth.d, generator=g, dtype=DTYPE)
        fit = torch.zeros(n, dtype=torch.long)
        ys.append(M.sample(truth.spec, truth.params(1), x, fit, g))
        xs.append(x)
        fits.append(torch.full((n,), fid, dtype=torch.long))
    return {"x": torch.cat(xs), "y": torch.cat(ys), "fit": torch.cat(fits)}


def expand_truth(truth: Truth, atoms: list[int], n_fits: int) -> dict:
    """The truth written with the fitted number of atoms (see the module docstring)."""
    k_star = truth.k
    if sorted(set(atoms)) != list(range(k_star)):
        raise ValueError(f"atoms={atoms}: every true expert 0..{k_star - 1} needs at least one atom")
    if atoms[-1] != k_star - 1 or atoms.count(k_star - 1) != 1:
        raise ValueError(f"atoms={atoms}: the last atom must be the last true expert, alone "
                         "(its gate parameters are fixed at 0)")
    p = truth.params(n_fits)
    idx = torch.tensor(atoms)
    out = {key: p[key][:, idx] for key in ("w1", "w0", "a", "b", "var")}  # (B, k, ...)
    multiplicity = torch.tensor([atoms.count(j) for j in atoms], dtype=DTYPE)
    out["w0"] = out["w0"] - multiplicity.log()
    out["tau"] = p["tau"]
    return out


def initialise(truth: Truth, atoms: list[int], design: Design, scale: float, rate: float) -> dict:
    """Truth (expanded to ``atoms``) plus noise of std ``scale * n^-rate``, one stream per fit."""
    p = expand_truth(truth, atoms, design.n_fits)
    for fid, r, n in design.fits():
        g = generator("init", design.seed, r, n)
        std = scale * n ** (-rate)
        noise = {key: std * torch.randn(p[key][fid].shape, generator=g, dtype=DTYPE)
                 for key in ("w1", "w0", "a", "b", "var")}
        noise["w1"][-1] = 0.0
        noise["w0"][-1] = 0.0  # the last expert's gate stays at 0
        for key in ("w1", "w0", "a", "b"):
            p[key][fid] += noise[key]
        p["var"][fid] *= noise["var"].exp()
        p["tau"][fid] *= math.exp(std * torch.randn(1, generator=g, dtype=DTYPE).item())
    return p
