"""What a scale costs before it is run: ``python -m replicate plan scale=full hardware=gpu``.

For every figure (and in total) the plan lists the training runs, the parameters of the largest
model, the training tokens / examples, the training FLOPs, the estimated device-hours, the peak
memory of one job and the disk the run outputs keep. Nothing is trained and no full model is
allocated: every model is instantiated on PyTorch's ``meta`` device (shapes without storage), so
the plan of all 20 figures takes seconds. A run shared by several figures (same hash) is costed
once, in the first figure (in ``list`` order) that asks for it; later figures list it under
``runs`` but not under ``new``.

How each number is obtained (estimates, not measurements; see ``DEVICES`` for the speeds):

* **parameters**: ``sum(p.numel())`` of the module built on ``meta`` (fixed ones included; the
  MoE gating EM has a handful of parameters per fit and is listed as the fits' sample count);
* **training FLOPs**: the model's own counter where it has one (Mixture-of-Recursions:
  ``flops.train_flops_per_step``, attention and routing included, active tokens only); otherwise
  an analytic count, forward = 2 x multiply-adds and training = 3 x forward (the "6 N D" rule),
  with N the multiply-adds of the ``nn.Linear`` layers per token / image / sample, plus causal
  attention ``4 d T(T+1)/2`` per layer and sequence for the transformer LMs (other models: every
  weight matrix, stacked ones included, once per example); the hypernetwork
  runs once per step (one gamma) and the primary network it predicts once per image; the MIST
  set model's per-row layers once per row of a dataset (mean n of ``n_range``) plus its
  attention; EM (MoE gating): 100 float64 operations per (sample, expert) per iteration.
  Validation forward passes (1/3 of a training pass per example) are added to the time, not to
  the training FLOPs;
* **device-hours** = max(FLOPs / (MFU x peak), steps x per-step overhead) + per-job start-up,
  with the MFU, peak and overheads of ``DEVICES`` (stated in the plan's footer);
* **peak memory per job** = fp32 weights + fp32 gradients of the trainable ones + optimizer state
  (Adam/AdamW 8 bytes per parameter, SGD momentum 4, EM none) + activations saved for backward
  at the training batch (LMs: ``b (6 d + 3 h) + 8 d`` bytes per token and block application, b =
  2 under bf16 autocast, 4 in fp32, flash attention, plus the logits; MLPs: per example and
  weight matrix, ``b (in + out) + 4 in``), x 1.2 for the allocator; notebooks' probes excluded;
* **disk**: per run the last checkpoint (fp32 weights + optimizer state), kept only where the
  run's ``trainer.keep_checkpoints`` is ``last``, plus logs and metrics (~200 bytes per logged
  step). ``peak`` is the largest checkpoint written while a run trains.

Costs of the notebooks (probes, decoding, baselines) and of building data caches are not counted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from replicate import config as C


@dataclass(frozen=True)
class Device:
    """The speed assumptions of one hardware profile."""

    name: str  # what the hours are hours of
    unit: str  # column label: GPU-h | core-h
    peak_flops: float  # dense peak of the precision the profile trains in
    mfu: float  # assumed model FLOP utilisation
    step_overhead_s: float  # floor per optimizer step (Python, Lightning, optimizer, logging)
    job_overhead_s: float  # start-up per job (imports, data, torch.compile)
    compute_bytes: int  # bytes of an activation under the profile's precision
    em_rate: float  # EM (sample, expert) updates per second: float64, memory-bound, not FLOP-bound
    memory: float  # bytes of device memory (0: not checked)
    why: str  # one line: where the numbers come from


DEVICES = {
    "gpu": Device(
        name="one NVIDIA H100 SXM, bf16 dense peak 989 TFLOP/s", unit="GPU-h", peak_flops=989e12,
        mfu=0.30, step_overhead_s=0.010, job_overhead_s=60.0, compute_bytes=2, em_rate=2e9,
        memory=80e9,
        why="MFU 30% is what compiled bf16 ~100M-parameter transformers typically reach on one "
            "H100 (nanoGPT/llm.c-class code reports 30-50%; ours adds Lightning and routing, "
            "so the low end); small models hit the 10 ms per-step floor instead; start-up "
            "includes torch.compile. EM (float64, memory-bound): 2e9 (sample, expert) updates/s, "
            "~80 bytes each at 5% of 3.35 TB/s. Uncalibrated: no full-scale run has been timed "
            "on a GPU yet."),
    "cpu": Device(
        name="one CPU core (fp32, 1 torch thread per job), 50 GFLOP/s peak", unit="core-h",
        peak_flops=50e9, mfu=0.35, step_overhead_s=0.010, job_overhead_s=10.0, compute_bytes=4,
        em_rate=7e6, memory=0,
        why="50 GFLOP/s is one AVX2 core's fp32 FMA peak at ~3 GHz; MFU 35% and the EM rate are "
            "fit to this project's measured default-scale runs (Gated Attention and Hourglass "
            "within ~1.7x, MoE gating EM within 4x, on a loaded 2-core VM)."),
}

ACTIVATION_SLACK = 1.2  # allocator fragmentation and temporaries
LOG_BYTES_PER_LOGGED_STEP = 200
EM_FLOPS_PER_SAMPLE_EXPERT = 100


@dataclass
class JobCost:
    """The estimated cost of one training run."""

    figure: str
    run_hash: str
    target: str  # class name of the LightningModule
    steps: int
    params: int  # all parameters (fixed ones included)
    trainable: int
    unit: str  # what `examples` counts: tokens | images | datasets | samples
    examples: float  # training tokens / examples over the whole run
    train_flops: float
    val_flops: float
    flops_method: str
    memory_bytes: float  # peak memory of the job
    checkpoint_bytes: float  # size of last.ckpt
    log_bytes: float
    keep_checkpoint: bool

    def hours(self, device: Device) -> float:
        if self.unit == "samples":  # EM: (sample, expert) updates at the device's EM rate
            compute = self.train_flops / EM_FLOPS_PER_SAMPLE_EXPERT / device.em_rate
        else:
            compute = (self.train_flops + self.val_flops) / (device.mfu * device.peak_flops)
        return (max(compute, self.steps * device.step_overhead_s) + device.job_overhead_s) / 3600

    @property
    def disk_bytes(self) -> float:
        return self.log_bytes + (self.checkpoint_bytes if self.keep_checkpoint else 0.0)


@dataclass
class FigurePlan:
    figure: str
    runs: int = 0
    jobs: list[JobCost] = field(default_factory=list)  # runs costed here (not in an earlier figure)
    largest: int = 0  # parameters of the largest model among all its runs
    peak_memory: float = 0.0  # over all its runs
    error: str | None = None


# --------------------------------------------------------------------------- model inspection
def _meta_module(module_cfg: dict):
    """The LightningModule built on the meta device (no storage, no initialisation cost).

    A constructor that reads a tensor's value (``.item()``: a data-dependent initialisation)
    cannot run on meta; such a module is built on the CPU instead (``built_on_cpu`` is set)."""
    import torch
    from hydra.utils import instantiate

    node = OmegaConf.create(module_cfg)
    try:
        with torch.device("meta"):
            return instantiate(node, _convert_="all")
    except Exception as err:
        if "meta" not in repr(err.__cause__ or err):
            raise
    with torch.no_grad():
        module = instantiate(node, _convert_="all")
    module.built_on_cpu = True
    return module


def _linears(module) -> list[tuple[int, int]]:
    from torch import nn

    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def _matrices(module) -> list[tuple[int, int, int]]:
    """(in, out, copies) of every weight matrix applied once per example: ``nn.Linear`` layers and
    any other parameter with >= 2 dims (a stack of ``copies`` matrices, e.g. side-by-side models
    multiplied with ``bmm``); embeddings and norms are not multiply-adds."""
    from torch import nn

    found = []
    for m in module.modules():
        if isinstance(m, nn.Linear):
            found.append((m.in_features, m.out_features, 1))
        elif not isinstance(m, nn.Embedding):
            for p in m.parameters(recurse=False):
                if p.dim() >= 2:
                    found.append((int(p.shape[-2]), int(p.shape[-1]), int(math.prod(p.shape[:-2]))))
    return found


def _optimizer_bytes(module) -> int:
    """Optimizer state per trainable parameter: Adam/AdamW 8, SGD with momentum 4, none 0."""
    if getattr(module, "automatic_optimization", True) is False:
        return 0
    try:
        opt = module.configure_optimizers()
    except Exception:  # it may need a trainer: assume AdamW
        return 8
    opt = opt.get("optimizer", opt) if isinstance(opt, dict) else opt
    opt = opt[0] if isinstance(opt, (list, tuple)) else opt
    name = type(opt).__name__.lower()
    if "sgd" in name:
        return 4 if any(g.get("momentum", 0) for g in opt.param_groups) else 0
    return 8


@dataclass
class ModelFacts:
    params: int
    trainable: int
    optimizer_bytes: int
    # forward FLOPs per example (token / image / dataset / sample) and activation bytes per example
    forward_flops: float
    activation_bytes: float
    method: str
    per_step_flops: float = 0.0  # forward FLOPs paid once per step whatever the batch (hypernet)


def _lm_facts(module, lm, seq_len: int, compute_bytes: int, applications: float) -> tuple[float, float]:
    """(forward FLOPs per token, activation bytes per token) of a transformer LM whose blocks are
    applied ``applications`` times per token on average."""
    d, h, V = lm.d_model, lm.hidden_dim, lm.vocab_size
    linear = sum(i * o for i, o in _linears(module))  # every block, gates and head: once per token
    attention = 2 * d * (seq_len + 1)  # 4 d T(T+1)/2 per layer and sequence, per token
    flops = 2 * linear + lm.n_layer * attention
    act = applications * (compute_bytes * (6 * d + 3 * h) + 8 * d) + V * (compute_bytes + 8)
    return flops, act


def model_facts(run_cfg: DictConfig, compute_bytes: int) -> ModelFacts:
    """Parameters, FLOPs per example and activation bytes per example of one run's model."""
    module_cfg = OmegaConf.to_container(run_cfg.run.module, resolve=True)
    data = run_cfg.run.data
    target = module_cfg["_target_"].rsplit(".", 1)[-1]
    if target == "BatchedEM":  # EM over simulated fits: no module worth building
        experts = len(module_cfg["truth"]["a"])
        return ModelFacts(0, 0, 0, EM_FLOPS_PER_SAMPLE_EXPERT * experts, 8 * 10 * experts,
                          f"EM: {EM_FLOPS_PER_SAMPLE_EXPERT} float64 ops per (sample, expert) per iteration")
    module = _meta_module(module_cfg)
    params = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    opt = _optimizer_bytes(module)
    b = compute_bytes
    if target == "MoRLM":
        from replicate.papers.mixture_of_recursions import flops as F
        from replicate.papers.mixture_of_recursions.model import middle_layers

        lm, mor = module.lm_config, module.mor_config
        T = int(data.seq_len)
        per_token = F.forward_flops(lm, mor, T) / T
        if mor.variant == "vanilla":
            apps = lm.n_layer
        else:
            apps = 2 + middle_layers(lm.n_layer, mor.n_rec) * sum(F.active_counts(mor, T)) / T
        _, act = _lm_facts(module.model, lm, T, b, apps)
        return ModelFacts(params, trainable, opt, per_token, act,
                          "MoR flops.forward_flops (x3 for training)")
    if target == "GatedAttentionLM":
        from replicate.nn.transformer import LMConfig

        model_cfg = dict(module_cfg["model"])
        lm = LMConfig.from_dict({k: v for k, v in model_cfg.items() if k in LMConfig.__dataclass_fields__})
        per_token, act = _lm_facts(module, lm, int(data.seq_len), b, lm.n_layer)
        return ModelFacts(params, trainable, opt, per_token, act,
                          "6 x Linear MACs x tokens + causal attention")
    if target == "HypernetMIP":
        spec = module.spec
        primary = _primary_macs(spec)
        act = sum(b * (i + o) + 4 * i for i, o in _primary_layers(spec))
        hyper = 2 * sum(i * o for i, o in _linears(module))
        return ModelFacts(params, trainable, opt, 2 * primary, act,
                          "hypernetwork once per step + primary net per image, x3", per_step_flops=hyper)
    if target == "MISTModule":
        lo, hi = (int(v) for v in data.n_range)
        n = (lo + hi) / 2
        dim = int(module_cfg["model"]["dim"])
        m = int(module_cfg["model"]["inducing"])
        blocks = int(module_cfg["model"]["encoder_blocks"])
        rows = sum(1 for x in module.modules() if type(x).__name__ == "SAB")
        linear = sum(i * o for i, o in _linears(module))
        attention = 4 * dim * (rows * n * n + 2 * blocks * n * m)
        act = n * sum(b * (i + o) + 4 * i for i, o in _linears(module)) + b * n * n * rows
        return ModelFacts(params, trainable, opt, 2 * linear * n + attention, act,
                          "per-row Linear MACs x mean n + attention, x3")
    if target == "HourglassGrid" and hasattr(module, "shapes"):
        mats = _hourglass_matrices(module)
        if mats:
            return ModelFacts(params, trainable, opt, 2 * sum(i * o * c for i, o, c in mats),
                              sum(c * (b * (i + o) + 4 * i) for i, o, c in mats),
                              "6 x Linear MACs of every grid shape x copies x images")
    # an MLP-like model (and anything new): every weight matrix once per example
    mats = _matrices(module)
    return ModelFacts(params, trainable, opt, 2 * sum(i * o * c for i, o, c in mats),
                      sum(c * (b * (i + o) + 4 * i) for i, o, c in mats), "6 x matrix MACs x examples")


def _hourglass_matrices(module) -> list[tuple[int, int, int]]:
    """(in, out, copies) of the Linear layers of every shape of an Hourglass grid (its nets may hold
    their copies, one per learning rate, as one flat parameter: rebuilt here on meta per shape)."""
    import torch

    from replicate.papers.hourglass_mlp.model import build

    mats = []
    with torch.device("meta"):
        for shape in module.shapes:
            copies = len(module.shape_lrs(shape)) if hasattr(module, "shape_lrs") else 1
            mats += [(i, o, copies) for i, o in _linears(build(shape, module.d_x, module.d_x))]
    return mats


def _primary_layers(spec) -> list[tuple[int, int]]:
    """(in, out) per weight matrix of a hypernetwork's primary net (conv: per output position)."""
    layers = []
    for name, shape in spec.shapes.items():
        if name.endswith(".weight"):
            layers.append((int(math.prod(shape[1:])), int(shape[0])))
    return layers


def _primary_macs(spec) -> float:
    """Multiply-adds of one primary forward pass (a 3x3 conv at every input position)."""
    h, w = spec.in_shape[1:] if len(spec.in_shape) == 3 else (1, 1)
    macs = 0.0
    for name, shape in spec.shapes.items():
        if name.endswith(".weight"):
            macs += math.prod(shape) * (h * w if len(shape) == 4 else 1)
    return macs


def _per_step_examples(run_cfg: DictConfig) -> tuple[str, float, float]:
    """(unit, examples per training step, FLOP-bearing items per step) from the run's data."""
    data = run_cfg.run.data
    target = data._target_.rsplit(".", 1)[-1]
    if target in ("TextDataModule", "BigramBackcopyDataModule"):
        return "tokens", data.batch_size * data.seq_len, data.batch_size * data.seq_len
    if target == "MetaDataModule":
        return "datasets", data.datasets_per_step, data.datasets_per_step
    if target == "MoESimulation":
        samples = data.replicates * sum(data.n_grid)
        return "samples", samples, samples
    return "images", data.batch_size, data.batch_size


def job_cost(figure: str, run_cfg: DictConfig, device: Device, cache: dict) -> JobCost:
    """The estimated cost of one run (``cache`` holds ModelFacts by module config)."""
    module_cfg = OmegaConf.to_container(run_cfg.run.module, resolve=True)
    key = json.dumps({k: v for k, v in module_cfg.items() if k not in ("seed", "max_steps", "optim")},
                     sort_keys=True, default=str)
    data_cfg = OmegaConf.to_container(run_cfg.run.data, resolve=True)
    key += json.dumps({k: v for k, v in data_cfg.items() if k not in ("seed", "max_steps")},
                      sort_keys=True, default=str)
    if key not in cache:
        cache[key] = model_facts(run_cfg, device.compute_bytes)
    facts: ModelFacts = cache[key]
    t = run_cfg.run.trainer
    unit, per_step, items = _per_step_examples(run_cfg)
    steps = int(t.max_steps)
    per_item = facts.forward_flops
    train = 3.0 * steps * (items * per_item + facts.per_step_flops)
    if unit == "samples":  # EM iterations: no backward pass
        train /= 3.0
    validations = max(1, steps // max(1, int(t.val_check_interval)))
    val = validations * int(t.limit_val_batches) * (items * per_item + facts.per_step_flops)
    if unit == "samples":
        val = 0.0
    weights = 4 * facts.params + 4 * facts.trainable + facts.optimizer_bytes * facts.trainable
    memory = weights + ACTIVATION_SLACK * items * facts.activation_bytes
    checkpoint = 4 * facts.params + facts.optimizer_bytes * facts.trainable
    logs = (steps / max(1, int(t.log_every_n_steps)) + validations) * LOG_BYTES_PER_LOGGED_STEP
    keep = str(t.get("keep_checkpoints", "last")) == "last"
    return JobCost(figure=figure, run_hash=C.run_hash(run_cfg), target=module_cfg["_target_"].rsplit(".", 1)[-1],
                   steps=steps, params=facts.params, trainable=facts.trainable, unit=unit,
                   examples=steps * per_step, train_flops=train, val_flops=val, flops_method=facts.method,
                   memory_bytes=memory, checkpoint_bytes=checkpoint, log_bytes=logs, keep_checkpoint=keep)


# --------------------------------------------------------------------------- the plan
@dataclass
class Plan:
    scale: str
    hardware: str
    device: Device
    figures: list[FigurePlan]

    @property
    def jobs(self) -> list[JobCost]:
        return [j for f in self.figures for j in f.jobs]

    @property
    def errors(self) -> list[str]:
        return [f"{f.figure}: {f.error}" for f in self.figures if f.error]


def make_plan(scale: str = "full", hardware: str = "gpu", overrides=(), figures=None) -> Plan:
    """Cost every figure's runs at ``scale`` on ``hardware`` (a broken figure is kept as an error row)."""
    C.check_scale(scale)
    hw = C.resolve_hardware_name(hardware)
    device = DEVICES.get(hw, DEVICES["cpu"])
    cache: dict = {}
    seen: set[str] = set()
    plans = []
    for name in figures or C.list_figures():
        fp = FigurePlan(name)
        try:
            cfg = C.compose(name, hw, scale, list(overrides))
            run_cfgs = C.run_configs(cfg)
            fp.runs = len({C.run_hash(r) for r in run_cfgs})
            for run_cfg in run_cfgs:
                job = job_cost(name, run_cfg, device, cache)
                fp.largest = max(fp.largest, job.params)
                fp.peak_memory = max(fp.peak_memory, job.memory_bytes)
                if job.run_hash not in seen:
                    seen.add(job.run_hash)
                    fp.jobs.append(job)
        except Exception as err:  # one broken figure does not hide the others
            fp.error = " ".join(str(err).strip().splitlines()[:2]) or type(err).__name__
        plans.append(fp)
    return Plan(scale, hw, device, plans)


def _si(x: float, unit: str = "") -> str:
    if x == 0:
        return "0" + (f" {unit}" if unit else "")
    for factor, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}".rstrip()
    return f"{x:.3g} {unit}".rstrip()


def _bytes(x: float) -> str:
    for factor, prefix in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if x >= factor:
            return f"{x / factor:.3g} {prefix}"
    return f"{x:.0f} B"


def _memory(x: float, device: Device) -> str:
    over = device.memory and x > device.memory
    return _bytes(x) + (f" (over {_bytes(device.memory)})" if over else "")


def _examples(jobs: list[JobCost]) -> str:
    by_unit: dict[str, float] = {}
    for j in jobs:
        by_unit[j.unit] = by_unit.get(j.unit, 0.0) + j.examples
    return ", ".join(f"{_si(v)} {u}" for u, v in sorted(by_unit.items())) or "-"


def _hours(h: float) -> str:
    return f"{h:.3g}" if h >= 0.01 else f"{h:.2g}"


def render(plan: Plan) -> str:
    """The plan as a markdown table with a total row and the assumptions under it."""
    d = plan.device
    head = ["figure", "runs", "new", "largest model", "training tokens / examples", "train FLOPs",
            d.unit, "peak mem / job", "disk kept", "ckpt peak"]
    lines = [f"Cost plan: scale={plan.scale} hardware={plan.hardware} ({d.name})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in plan.figures:
        if f.error:
            lines.append(f"| {f.figure} | BROKEN: {f.error} |" + " |" * (len(head) - 2))
            continue
        jobs = f.jobs
        lines.append("| " + " | ".join([
            f.figure, str(f.runs), str(len(jobs)), _si(f.largest) if f.largest else "- (EM)", _examples(jobs),
            _si(sum(j.train_flops for j in jobs)), _hours(sum(j.hours(d) for j in jobs)),
            _memory(f.peak_memory, d), _bytes(sum(j.disk_bytes for j in jobs)),
            _bytes(max((j.checkpoint_bytes for j in jobs), default=0))]) + " |")
    jobs = plan.jobs
    ok = [f for f in plan.figures if not f.error]
    lines.append("| " + " | ".join([
        "**total**", str(sum(f.runs for f in ok)), f"**{len(jobs)}**", _si(max((f.largest for f in ok), default=0)),
        _examples(jobs), f"**{_si(sum(j.train_flops for j in jobs))}**",
        f"**{_hours(sum(j.hours(d) for j in jobs))}**", _bytes(max((f.peak_memory for f in ok), default=0)),
        f"**{_bytes(sum(j.disk_bytes for j in jobs))}**",
        _bytes(max((j.checkpoint_bytes for j in jobs), default=0))]) + " |")
    methods = sorted({f"{j.target}: {j.flops_method}" for j in jobs})
    lines += ["", f"- Device: {d.name}; MFU {d.mfu:.0%}; per-step floor {d.step_overhead_s * 1e3:.0f} ms; "
              f"start-up {d.job_overhead_s:.0f} s per job. {d.why}",
              f"- {d.unit} = max(FLOPs incl. validation / (MFU x peak), steps x floor) + start-up, "
              "summed over the new runs; one job per device at a time.",
              "- `runs`: distinct runs of the figure; `new`: those not already costed for an "
              "earlier figure (shared runs train once). `disk kept`: logs and metrics, plus the "
              "last checkpoint where `trainer.keep_checkpoints: last`; `ckpt peak`: the largest "
              "checkpoint written while a run trains.",
              "- Peak memory = fp32 weights + grads + optimizer state + activations at the "
              "training batch (estimate, x1.2); notebooks and data caches are not counted"
              + (f"; '(over {_bytes(d.memory)})': a job that would not fit the device." if d.memory else "."),
              "- FLOPs: " + "; ".join(methods) + "."]
    if plan.errors:
        lines += ["", f"{len(plan.errors)} figure(s) could not be costed: first: {plan.errors[0]}"]
    return "\n".join(lines)


def main(scale: str, hardware: str, overrides=()) -> str:
    plan = make_plan(scale, hardware, overrides)
    text = render(plan)
    if plan.errors:
        print(text)
        raise C.ConfigError(f"{len(plan.errors)} figure(s) could not be costed; first: {plan.errors[0]}")
    return text
