"""The MoE gating simulations as Lightning runs: one run = one (truth, gate, fitted k, init) setting,
all its replicates x sample sizes fitted at once.

* ``MoESimulation`` (LightningDataModule): the simulated data of every fit, a pure function of
  the run seed (problem.py); each training "batch" is the whole data set (one EM iteration).
* ``BatchedEM``: maximum likelihood by the estimator of fit.py (:class:`fit.Estimator`, the same
  stages as ``fit_moe``: starts and screening in the first step, one main-loop iteration per
  training step with manual optimisation, basin hops and the selection repair in the step that
  ends the loop), then refits of the same data from the truth and/or the data (``references``)
  whose log-likelihoods the MLE precondition reads. The run stops early
  (``trainer.should_stop``) once the estimator has finished, else at ``trainer.max_steps``.
* ``GradientMLE``: the same likelihood maximised by gradient steps (L-BFGS or Adam) over
  unconstrained parameters (log var, log tau); it exists to cross-check EM (tests).

Both log ``train_loss`` = negative observed log-likelihood per sample (mean over fits) and
``val_loss`` = the per-sample log-likelihood gap truth - fit (mean over fits; a converged MLE
makes it <= 0, a failed optimisation makes it > 0). ``probe_metrics`` records, per fit, the
errors of metrics.py and both log-likelihoods, so a slow rate can be told from a failed fit.
Everything is float64 and computed with autocast off (the gpu profile asks for bf16-mixed,
which would ruin a likelihood); the gpu profile's ``torch.compile`` only wraps ``forward``,
which these modules do not use.
"""

from __future__ import annotations

import hashlib

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from replicate.papers.moe_gating import em, fit as F, metrics
from replicate.papers.moe_gating import model as M
from replicate.papers.moe_gating.problem import DTYPE, Design, Truth, expand_truth, initialise, simulate


# --------------------------------------------------------------------------- data
class _Repeat(Dataset):
    """The whole data set, ``length`` times (one item per EM iteration)."""

    def __init__(self, data: dict, length: int):
        self.data, self.length = data, max(0, length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return self.data


class _Loader(DataLoader):
    """Stateful only so that Lightning knows a mid-epoch resume is exact: every item is the same."""

    def state_dict(self) -> dict:
        return {"seed": self.dataset.seed}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict and state_dict != self.state_dict():
            raise ValueError(f"checkpoint data {state_dict} differs from this run's {self.state_dict()}")


class MoESimulation(L.LightningDataModule):
    """Samples of every (replicate, n) from the true MoE ``truth`` (see problem.py).

    Args (``run.data``): truth (Truth fields), n_grid, replicates, seed, max_steps."""

    def __init__(self, truth: dict, n_grid: list[int], replicates: int, seed: int = 0,
                 max_steps: int = 100):
        super().__init__()
        self.truth = Truth(**truth)
        self.design = Design(list(n_grid), replicates, seed)
        self.seed, self.max_steps = seed, max_steps
        self.data: dict | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            self.data = simulate(self.truth, self.design)

    @property
    def provenance(self) -> dict:
        self.setup()
        digest = hashlib.sha256(self.data["x"].numpy().tobytes() + self.data["y"].numpy().tobytes())
        return {"source": "simulated_moe", "n_grid": self.design.n_grid,
                "replicates": self.design.replicates, "seed": self.seed,
                "data_sha256": digest.hexdigest()}

    def train_dataloader(self) -> DataLoader:
        offset = int(self.trainer.global_step) if self.trainer is not None else 0
        dataset = _Repeat(self.data, self.max_steps - offset)
        dataset.seed = self.seed
        return _Loader(dataset, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader([self.data], batch_size=None)


# --------------------------------------------------------------------------- shared
class _MoEFit(L.LightningModule):
    """What both estimators share: the setting, the losses they log and the probes."""

    def __init__(self, truth: dict, fitted: dict, n_grid: list[int], replicates: int, seed: int,
                 init: dict, hellinger: dict | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.truth = Truth(**truth)
        self.gate = M.Gate(fitted["gate"], fitted.get("top_k"), fitted.get("rank") or "logit")
        self.atoms = list(fitted["atoms"])
        self.design = Design(list(n_grid), replicates, seed)
        self.hellinger_grid = dict(hellinger or {})
        self.init = {"kind": "near_truth", "scale": 0.1, "rate": 0.0, "n_starts": 4, **dict(init or {})}
        if self.init["kind"] not in ("near_truth", "data"):
            raise ValueError(f"init.kind={self.init['kind']!r}; expected near_truth or data")
        self.register_buffer("sizes", self.design.sizes.to(DTYPE), persistent=False)
        self._start = initialise(self.truth, self.atoms, self.design, self.init["scale"], self.init["rate"])

    @property
    def data_init(self) -> bool:
        return self.init["kind"] == "data"

    def params(self) -> dict:
        raise NotImplementedError

    def _unpack(self, batch):
        if batch["x"].shape[0] != int(self.design.sizes.sum()):
            raise ValueError(f"data hold {batch['x'].shape[0]} points, the module's design "
                             f"{int(self.design.sizes.sum())}: run.module and run.data disagree on n_grid/replicates")
        return batch["x"], batch["y"], batch["fit"], self.design.n_fits

    def _truth_params(self) -> dict:
        return {k: v.to(self.device) for k, v in self.truth.params(self.design.n_fits).items()}

    def validation_step(self, batch, batch_idx):
        with torch.autocast(self.device.type, enabled=False), torch.no_grad():
            x, y, fit, b = self._unpack(batch)
            fit_ll = M.loglik(self.gate, self.params(), x, y, fit, b)
            true_ll = M.loglik(self.truth.spec, self._truth_params(), x, y, fit, b)
            self.log("val_loss", ((true_ll - fit_ll) / self.sizes).mean(), prog_bar=True)

    @torch.no_grad()
    def probe_metrics(self, datamodule) -> dict:
        """Per fit: replicate, n, log-likelihoods, errors (metrics.py) and the fitted parameters."""
        datamodule.setup("fit")
        data = {k: v.to(self.device) for k, v in datamodule.data.items()}
        with torch.autocast(self.device.type, enabled=False):
            return _probe(self, data)


def _probe(module: _MoEFit, data: dict) -> dict:
    p, truth, b = module.params(), module._truth_params(), module.design.n_fits
    x, y, fit = data["x"], data["y"], data["fit"]
    if module.data_init:  # atoms in arbitrary order: match them to the truth's experts first
        p = metrics.align(p, truth, shift_invariant=module.gate.kind != "activation")
    cells = metrics.assign_cells(p, truth)
    unselected = F.never_selected(module.gate, p, x, fit, b)
    per_fit = {
        "replicate": [r for _, r, _ in module.design.fits()],
        "n": [n for _, _, n in module.design.fits()],
        "ll_fit": M.loglik(module.gate, p, x, y, fit, b),
        "ll_truth": M.loglik(module.truth.spec, truth, x, y, fit, b),
        "voronoi": metrics.voronoi_loss(p, truth, cells),
        "hellinger": metrics.hellinger(module.gate, p, module.truth.spec, truth, **module.hellinger_grid),
        "never_selected": unselected.sum(1),
        **metrics.parameter_errors(p, truth, cells),
    }
    if module.gate.has_tau and len(module.atoms) == module.truth.k:
        per_fit.update(metrics.temperature_errors(p, truth))
    per_fit["cells"] = cells
    per_fit["params"] = {k: p[k] for k in ("w1", "w0", "a", "b", "var", "tau")}
    plain = {k: v.cpu().tolist() if torch.is_tensor(v) else v for k, v in per_fit.items()}
    plain["params"] = {k: v.cpu().tolist() for k, v in per_fit["params"].items()}
    return {"per_fit": plain, "gate": module.gate.kind, "top_k": module.gate.top_k,
            "rank": module.gate.rank, "atoms": module.atoms, "k_true": module.truth.k,
            "d": module.truth.d, "init": dict(module.init),
            "truth": {"name": module.truth.name, "gate": module.truth.gate, "top_k": module.truth.top_k,
                      "rank": module.truth.rank, "w1": module.truth._w1, "a": module.truth._a,
                      **{k: [float(v) for v in getattr(module.truth, k)] for k in ("w0", "b", "sigma")},
                      "tau": float(module.truth.tau)}}


# --------------------------------------------------------------------------- EM
STATE_KEYS = ("gate_step", "h", "smooth", "best_ll", "ll", "ll_change", "done", "starved",
              "loop_iterations", "extra_iterations", "screen_iterations", "finished")
REFERENCES = ("truth", "data")


class BatchedEM(_MoEFit):
    """The estimator of fit.py (:class:`fit.Estimator`, the stages ``fit_moe`` runs) for every fit
    of the run at once: the first training step takes the starts (and screens data-driven ones),
    every step is one main-loop iteration, and the step that ends the loop (every fit converged,
    or ``em.max_iter`` iterations) runs the basin hops and the selection repair. The run then
    stops (``trainer.should_stop``). A run that ``trainer.max_steps`` stops first records
    ``finished: False`` in its probes, and its fits count as unconverged (analysis.fits_frame).

    References (``references``: ``truth`` and/or ``data``): once the estimator has finished, the
    same estimator is run again on the same data from the truth itself (expanded to the fitted
    atoms, problem.expand_truth) and/or from ``init.n_starts`` data-driven starts, and their
    observed log-likelihoods are recorded per fit (``ll_ref_<name>``; NaN when not run). The best
    of the fit and its references is the best maximum found on that data; a fit more than a
    tolerance below it is not the MLE (analysis.off_mle), whatever its start.

    Args (``run.module``): truth, fitted {gate, top_k, rank, atoms}, n_grid, replicates, seed (as
    the data), init {kind: near_truth | data, scale, rate (problem.initialise), n_starts},
    em {max_iter, tol, n_hops, n_repairs, screen_iters, smooth0, smooth_decay, and em.EMOptions
    fields}, references, hellinger {nx, ny}, hellinger_check (a finer {nx, ny}: the Hellinger
    distance is also computed on it, ``hellinger_fine``)."""

    def __init__(self, truth: dict, fitted: dict, n_grid: list[int], replicates: int, seed: int = 0,
                 init: dict | None = None, em: dict | None = None, hellinger: dict | None = None,
                 references: list[str] | None = None, hellinger_check: dict | None = None):
        super().__init__(truth, fitted, n_grid, replicates, seed, init, hellinger)
        self.opts = _fit_options(dict(em or {}), self.init)
        self.tol = self.opts.tol
        self.references = list(references or [])
        unknown = set(self.references) - set(REFERENCES)
        if unknown:
            raise ValueError(f"references: unknown {sorted(unknown)}; known: {', '.join(REFERENCES)}")
        self.hellinger_check = dict(hellinger_check) if hellinger_check else None
        for key, value in self._start.items():
            self.register_buffer(key, value.clone())
            self.register_buffer(f"best_{key}", value.clone())  # the continuation's best hard point
        b, k = self.design.n_fits, len(self.atoms)
        self.register_buffer("gate_step", torch.ones(b, dtype=DTYPE))
        self.register_buffer("h", torch.full((b,), self.opts.em.h0, dtype=DTYPE))
        self.register_buffer("smooth", torch.zeros(b, dtype=DTYPE))
        self.register_buffer("best_ll", torch.full((b,), -float("inf"), dtype=DTYPE))
        self.register_buffer("ll", torch.full((b,), -float("inf"), dtype=DTYPE))
        self.register_buffer("ll_change", torch.full((b,), float("inf"), dtype=DTYPE))
        self.register_buffer("done", torch.zeros(b, dtype=torch.bool))
        self.register_buffer("starved", torch.zeros(b, k, dtype=torch.bool))
        for key in ("loop_iterations", "extra_iterations", "screen_iterations"):
            self.register_buffer(key, torch.zeros((), dtype=torch.long))
        self.register_buffer("finished", torch.zeros((), dtype=torch.bool))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))
        for name in REFERENCES:
            self.register_buffer(f"ll_ref_{name}", torch.full((b,), float("nan"), dtype=DTYPE))
        self._estimator: F.Estimator | None = None  # data caches, rebuilt after a resume
        # Lightning counts steps by optimizer steps: a no-op optimizer on a frozen scalar makes
        # one EM iteration one global step (max_steps, checkpoints and resume then work as usual)
        self.step_counter = nn.Parameter(torch.zeros((), dtype=DTYPE), requires_grad=False)

    def params(self) -> dict:
        return {key: getattr(self, key) for key in M.PARAM_KEYS}

    def converged(self) -> bool:
        """The estimator has finished (loop ended, hops and repair done)."""
        return bool(self.finished)

    def on_train_start(self):
        # a run resumed from the checkpoint of a finished run stops without iterating again
        if self.converged():
            self.trainer.should_stop = True

    def _state(self) -> dict:
        return {"params": self.params(), "best": {k: getattr(self, f"best_{k}") for k in M.PARAM_KEYS},
                **{k: getattr(self, k) for k in STATE_KEYS}}

    def _load(self, state: dict) -> None:
        for key in M.PARAM_KEYS:
            getattr(self, key).copy_(state["params"][key])
            getattr(self, f"best_{key}").copy_(state["best"][key])
        for key in STATE_KEYS:
            getattr(self, key).copy_(state[key])

    def _make(self, x, y, fit, b, init) -> F.Estimator:
        return F.Estimator(self.gate, x, y, fit, b, len(self.atoms), init, self.opts, self.design.seed)

    def training_step(self, batch, batch_idx):
        with torch.autocast(self.device.type, enabled=False), torch.no_grad():
            x, y, fit, b = self._unpack(batch)
            if self._estimator is None:
                start = "data" if self.data_init else {k: v.clone() for k, v in self._start.items()}
                self._estimator = self._make(x, y, fit, b, start)
            if not bool(self.started):
                self._load(self._estimator.begin())
                self.started.fill_(True)
            self._load(self._estimator.advance(self._state()))
            if self.converged():
                self._run_references(x, y, fit, b)
            self.optimizers().step()
            if self.converged():
                self.trainer.should_stop = True
            loss = -(self.ll / self.sizes).mean()
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def _run_references(self, x, y, fit, b) -> None:
        """The estimator again on the same data from the truth and/or from the data (class docstring)."""
        for name in self.references:
            if name == "truth":
                start = {k: v.to(x.device) for k, v in expand_truth(self.truth, self.atoms, b).items()}
            else:
                start = "data"
            state = self._make(x, y, fit, b, start).run()
            getattr(self, f"ll_ref_{name}").copy_(state["ll"])

    def configure_optimizers(self):
        return torch.optim.SGD([self.step_counter], lr=0.0)

    @torch.no_grad()
    def probe_metrics(self, datamodule) -> dict:
        out = super().probe_metrics(datamodule)
        per_fit = out["per_fit"]
        per_fit["ll_change"] = self.ll_change.abs().cpu().tolist()
        per_fit["converged"] = self.done.cpu().tolist()
        per_fit["starved"] = self.starved.sum(1).cpu().tolist()
        for name in self.references:
            per_fit[f"ll_ref_{name}"] = getattr(self, f"ll_ref_{name}").cpu().tolist()
        if self.hellinger_check:
            p, truth = self.params(), self._truth_params()
            if self.data_init:
                p = metrics.align(p, truth, shift_invariant=self.gate.kind != "activation")
            with torch.autocast(self.device.type, enabled=False):
                per_fit["hellinger_fine"] = metrics.hellinger(self.gate, p, self.truth.spec, truth,
                                                              **self.hellinger_check).cpu().tolist()
            out["hellinger_check"] = dict(self.hellinger_check)
        out["converged_fraction"] = float(self.done.double().mean())
        out["finished"] = bool(self.finished)
        out["iterations"] = {"screen": int(self.screen_iterations), "loop": int(self.loop_iterations),
                             "polish": int(self.extra_iterations), "max_iter": self.opts.max_iter}
        out["references"] = list(self.references)
        out["tol"] = self.tol
        return out


def _fit_options(options: dict, init: dict) -> F.FitOptions:
    top = {k: options.pop(k) for k in ("max_iter", "tol", "n_hops", "n_repairs", "screen_iters", "smooth0",
                                        "smooth_near", "smooth_decay", "smooth_min") if k in options}
    unknown = set(options) - set(em.EMOptions.__dataclass_fields__)
    if unknown:
        raise ValueError(f"em: unknown option(s) {sorted(unknown)}; known: max_iter, tol, n_hops, n_repairs, "
                         f"screen_iters, smooth0, smooth_near, smooth_decay, smooth_min, "
                         f"{', '.join(em.EMOptions.__dataclass_fields__)}")
    return F.FitOptions(em=em.EMOptions(**options), n_starts=int(init.get("n_starts", 4)), **top)


# --------------------------------------------------------------------------- gradient MLE
class GradientMLE(_MoEFit):
    """The same likelihood maximised by gradient steps on (w1, w0 of the first k-1 experts, a, b,
    log var, log tau); started from the same initialisation as ``BatchedEM`` (near the truth).

    Args: as ``BatchedEM`` plus optim {name: lbfgs | adam, lr}."""

    OPTIMIZERS = ("lbfgs", "adam")

    def __init__(self, truth: dict, fitted: dict, n_grid: list[int], replicates: int, seed: int = 0,
                 init: dict | None = None, optim: dict | None = None, hellinger: dict | None = None):
        super().__init__(truth, fitted, n_grid, replicates, seed, init, hellinger)
        self.optim = {"name": "lbfgs", "lr": 1.0, **(optim or {})}
        if self.optim["name"] not in self.OPTIMIZERS:
            raise ValueError(f"optim.name={self.optim['name']!r}; expected one of {self.OPTIMIZERS}")
        s, k = self._start, len(self.atoms)
        self.gate_w1 = nn.Parameter(s["w1"][:, : k - 1].clone())
        self.gate_w0 = nn.Parameter(s["w0"][:, : k - 1].clone())
        self.a = nn.Parameter(s["a"].clone())
        self.b = nn.Parameter(s["b"].clone())
        self.log_var = nn.Parameter(s["var"].log())
        self.log_tau = nn.Parameter(s["tau"].log(), requires_grad=self.gate.has_tau)

    def params(self) -> dict:
        b, _, d = self.gate_w1.shape
        return {"w1": torch.cat([self.gate_w1, self.gate_w1.new_zeros(b, 1, d)], 1),
                "w0": torch.cat([self.gate_w0, self.gate_w0.new_zeros(b, 1)], 1),
                "a": self.a, "b": self.b, "var": self.log_var.exp(), "tau": self.log_tau.exp()}

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        x, y, fit, b = self._unpack(batch)

        def closure():
            opt.zero_grad()
            with torch.autocast(self.device.type, enabled=False):
                loss = -(M.loglik(self.gate, self.params(), x, y, fit, b) / self.sizes).mean()
            self.manual_backward(loss)
            return loss

        loss = opt.step(closure=closure)
        self.log("train_loss", loss.detach(), prog_bar=True)
        return loss.detach()

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if self.optim["name"] == "lbfgs":
            return torch.optim.LBFGS(params, lr=self.optim["lr"], max_iter=50,
                                     line_search_fn="strong_wolfe")
        return torch.optim.Adam(params, lr=self.optim["lr"])
