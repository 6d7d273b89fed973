"""Hypernetwork MIP (Ortiz et al. 2024): shapes, the proportionality at init, MIP's residual and
encoding, gradients, the tasks, the LightningModule and the notebook measurements."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from replicate import config as C
from replicate import runs
from replicate.papers.hypernet_mip.analysis import loglog_slope, steps_to_threshold
from replicate.papers.hypernet_mip.model import (VARIANTS, HyperModel, HyperNet, PrimaryModule,
                                                 PrimaryNet, encode)
from replicate.papers.hypernet_mip.module import HypernetMIP, band_sigma, effective_config

MLP = dict(arch="mlp", in_shape=(1, 8, 8), hidden=(16, 16, 16))
CNN = dict(arch="cnn", in_shape=(1, 8, 8), channels=(4, 8))


def model(variant, primary=MLP, seed=0, **kw):
    torch.manual_seed(seed)
    return HyperModel(PrimaryNet(**primary), variant, hidden=(32, 32), **kw)


def images(n=6, shape=(1, 8, 8)):
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(3))


def reference_net(spec: PrimaryNet) -> nn.Module:
    """The primary network written as ordinary nn.Modules, named like the spec."""
    if spec.arch == "mlp":
        widths = [math.prod(spec.in_shape), *spec.hidden, spec.classes]
        return nn.ModuleDict({f"fc{i}": nn.Linear(a, b) for i, (a, b) in enumerate(zip(widths, widths[1:]))})
    chans = [spec.in_shape[0], *spec.channels]
    layers = {f"conv{i}": nn.Conv2d(a, b, 3, padding=1) for i, (a, b) in enumerate(zip(chans, chans[1:]))}
    return nn.ModuleDict({**layers, "fc": nn.Linear(chans[-1] * spec.pool ** 2, spec.classes)})


def reference_forward(net: nn.ModuleDict, spec: PrimaryNet, x):
    if spec.arch == "mlp":
        h = x.flatten(1)
        for i in range(len(spec.hidden) + 1):
            h = net[f"fc{i}"](h)
            h = torch.relu(h) if i < len(spec.hidden) else h
        return h
    h = x
    for i in range(len(spec.channels)):
        h = torch.relu(net[f"conv{i}"](h))
    return net["fc"](nn.functional.adaptive_avg_pool2d(h, spec.pool).flatten(1))


# --------------------------------------------------------------------------- shapes, forward


@pytest.mark.parametrize("primary", [MLP, CNN], ids=["mlp", "cnn"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_predicted_parameters_have_the_primary_networks_shapes(primary, variant):
    m = model(variant, primary)
    ref = reference_net(m.primary)
    params = m.params(torch.tensor([0.3]))
    assert {n: tuple(p.shape) for n, p in params.items()} == {n: tuple(p.shape) for n, p in ref.named_parameters()}
    assert m.hyper.out.out_features == sum(p.numel() for p in ref.parameters()) == m.primary.n_params


@pytest.mark.parametrize("primary", [MLP, CNN], ids=["mlp", "cnn"])
def test_functional_forward_equals_the_module_with_the_predicted_weights(primary):
    m = model("mip", primary)
    x = images()
    params = m.params(torch.tensor([0.7]))
    ref = reference_net(m.primary)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.copy_(params[n])
    torch.testing.assert_close(m(torch.tensor([0.7]), x), reference_forward(ref, m.primary, x))
    with pytest.raises(ValueError, match="in_shape"):
        m(torch.tensor([0.7]), images(shape=(1, 9, 9)))


# --------------------------------------------------------------------------- proportionality


@pytest.mark.parametrize("activation", ["relu", "leakyrelu"])
def test_default_hypernetwork_is_exactly_proportional_to_its_input(activation):
    m = model("default", activation=activation)
    gamma = torch.tensor([0.8, 0.3, 0.5])
    m3 = HyperModel(PrimaryNet(**MLP), "default", input_dim=3, hidden=(32, 32), activation=activation)
    for c in (0.01, 0.1, 0.5):
        torch.testing.assert_close(m3.flat_params(c * gamma), c * m3.flat_params(gamma), rtol=1e-5, atol=1e-7)
    lo, hi = (float(m.flat_params(torch.tensor([g])).norm()) for g in (0.01, 1.0))
    assert hi / lo == pytest.approx(100.0, rel=1e-4)
    assert torch.count_nonzero(m.flat_params(torch.tensor([0.0]))) == 0  # theta0 = 0, zero biases


def test_pytorch_default_init_already_breaks_the_proportionality():
    m = model("default", init="torch")
    assert m.flat_params(torch.tensor([0.0])).norm() > 0.1  # uniform biases: theta(0) != 0


def test_mip_weights_are_theta0_plus_a_term_whose_norm_does_not_scale_with_gamma():
    m = model("mip")
    theta0 = m.hyper.theta0.detach().clone()
    norms = {}
    for g in (0.01, 0.1, 1.0):
        gamma = torch.tensor([g])
        torch.testing.assert_close(m.flat_params(gamma), theta0 + m.hyper.delta(gamma))
        norms[g] = m.hyper.delta(gamma).norm().item()
    assert 0.5 < norms[1.0] / norms[0.01] < 2.0  # the default's ratio is 100 (test above)
    assert loglog_slope(list(norms), list(norms.values())) == pytest.approx(0.0, abs=0.25)
    # and the whole theta is flat: theta0 dominates
    full = [float(m.flat_params(torch.tensor([g])).norm()) for g in (0.01, 1.0)]
    assert full[1] / full[0] == pytest.approx(1.0, abs=0.05)


def test_theta0_is_initialised_like_the_primary_network():
    m = model("residual", primary=dict(arch="mlp", in_shape=(1, 16, 16), hidden=(256,)))
    theta0 = m.primary.unflatten(m.hyper.theta0.detach())
    gain = nn.init.calculate_gain("leaky_relu")
    assert theta0["fc0.weight"].std().item() == pytest.approx(gain / math.sqrt(256), rel=0.05)
    assert theta0["fc1.weight"].std().item() == pytest.approx(gain / math.sqrt(256), rel=0.1)
    assert all(torch.count_nonzero(theta0[n]) == 0 for n in ("fc0.bias", "fc1.bias"))
    assert torch.count_nonzero(model("encoding").hyper.theta0) == 0  # no residual: output bias 0


def test_hyperlight_initialisation_of_the_hypernetwork():
    torch.manual_seed(0)
    h = HyperNet(1, 4000, hidden=(512, 512), activation="leakyrelu")  # one output block of 4000 rows
    first, second = h.body[0], h.body[2]
    gain = nn.init.calculate_gain("leaky_relu")
    assert first.weight.std().item() == pytest.approx(gain / math.sqrt(512), rel=0.1)  # fan-out
    assert second.weight.std().item() == pytest.approx(gain / math.sqrt(512), rel=0.05)
    assert h.out.weight.std().item() == pytest.approx(math.sqrt(2) / math.sqrt(4000), rel=0.05)
    assert all(torch.count_nonzero(b) == 0 for b in (first.bias, second.bias, h.out.bias))
    torch.manual_seed(0)
    old = HyperNet(1, 4000, hidden=(512, 512), activation="leakyrelu", init="oneblock")
    assert old.out.weight.std().item() == pytest.approx(1 / math.sqrt(4000), rel=0.05)  # linear gain


# --------------------------------------------------------------------------- encoding


def test_encodings_have_constant_norm():
    gamma = torch.rand(200, 3, generator=torch.Generator().manual_seed(0))
    cs = encode(gamma, "cos|sin")
    assert cs.shape == (200, 6)
    torch.testing.assert_close(cs.norm(dim=-1), torch.full((200,), math.sqrt(3)))
    torch.testing.assert_close(cs[:, :3], torch.cos(math.pi * gamma / 2))
    zz = encode(gamma, "z|1-z")
    torch.testing.assert_close(zz.abs().sum(-1), torch.full((200,), 3.0))
    assert torch.equal(encode(gamma, "none"), gamma)
    with pytest.raises(ValueError, match="encoding"):
        encode(gamma, "fourier")


def test_encoding_only_removes_the_scaling_of_the_predicted_term():
    m = model("encoding")
    lo, hi = (float(m.flat_params(torch.tensor([g])).norm()) for g in (0.01, 1.0))
    assert 0.5 < hi / lo < 2.0


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("primary", [MLP, CNN], ids=["mlp", "cnn"])
def test_gradients_reach_every_hypernetwork_parameter(variant, primary):
    m = model(variant, primary)
    x, y = images(), torch.arange(6) % 10
    nn.functional.cross_entropy(m(torch.tensor([0.4]), x), y).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# --------------------------------------------------------------------------- module and tasks


def module(**kw):
    torch.manual_seed(0)
    base = dict(hyper={"hidden": [16, 16]}, primary={"hidden": [16, 16]})
    return HypernetMIP(**{**base, **kw})


def test_noise_bands_and_per_step_gamma_are_deterministic():
    torch.testing.assert_close(band_sigma(torch.tensor([0.1, 0.5]), 8, 2.0),
                               torch.tensor([0.2] * 4 + [1.0] * 4))
    torch.testing.assert_close(band_sigma(torch.tensor([0.3]), 8, 1.0), torch.full((8,), 0.3))
    m = module(seed=3)
    assert torch.equal(m.train_gamma(17)[0], module(seed=3).train_gamma(17)[0])
    assert not torch.equal(m.train_gamma(17)[0], m.train_gamma(18)[0])
    assert not torch.equal(m.train_gamma(17)[0], module(seed=4).train_gamma(17)[0])
    x, y = images(), torch.arange(6)
    a = m.task_loss(x, y, torch.tensor([0.0]), torch.Generator().manual_seed(0))[0]
    b = m.task_loss(x, y, torch.tensor([0.0]), torch.Generator().manual_seed(1))[0]
    assert torch.equal(a, b)  # gamma = 0: no noise at all


def test_l2_task_weighs_cross_entropy_against_the_weight_norm():
    m = module(task={"kind": "l2", "l2_coef": 0.5})
    x, y, gen = images(), torch.arange(6), torch.Generator()
    params = m.model.params(torch.tensor([1.0]))
    l2 = sum(params[n].pow(2).sum() for n in m.spec.weight_names)
    torch.testing.assert_close(m.task_loss(x, y, torch.tensor([1.0]), gen)[0], 0.5 * l2)
    ce = nn.functional.cross_entropy(m.spec(m.model.params(torch.tensor([0.0])), x), y)
    torch.testing.assert_close(m.task_loss(x, y, torch.tensor([0.0]), gen)[0], ce)
    with pytest.raises(ValueError, match="input_dim=1"):
        module(task={"kind": "l2", "input_dim": 2})


def test_setting_is_merged_over_the_base_and_unknown_keys_fail():
    m = module(setting={"optim": {"name": "sgd", "lr": 0.1}, "hyper": {"activation": "tanh"}, "variant": "default"})
    assert isinstance(m.configure_optimizers(), torch.optim.SGD) and m.config["optim"]["lr"] == 0.1
    assert m.model.variant == "default" and m.config["hyper"]["hidden"] == [16, 16]
    assert isinstance(m.model.hyper.body[1], nn.Tanh)
    assert effective_config(setting={"task": {"input_dim": 4}})["task"]["noise_scale"] == 1.0
    with pytest.raises(TypeError, match="setting.optim.learning_rate"):
        module(setting={"optim": {"learning_rate": 0.1}})


def test_pipeline_run_is_deterministic_and_records_probes(tmp_path):
    cfg = C.compose("hypernet_mip/convergence", "cpu", "smoke", ["figure.run.trainer.max_steps=6",
                                                                 "figure.run.trainer.val_check_interval=3"])
    run_cfg = C.run_config(cfg, 1)  # noise regime, MIP, seeds 0, 1 and 100 side by side
    assert run_cfg.run.module.variant == "mip" and list(run_cfg.run.module.seeds) == [0, 1, 100]
    a = runs.read_metrics(runs.ensure(run_cfg, tmp_path / "a"))
    b = runs.read_metrics(runs.ensure(run_cfg, tmp_path / "b"))
    assert a["status"] == "finished" and a["steps"] == 6 and [v["step"] for v in a["val"]] == [3, 6]
    for key in ("train", "val", "probes"):
        assert a[key] == b[key], key
    p = a["probes"]
    assert [s["seed"] for s in p["per_seed"]] == [0, 1, 100]
    for s in p["per_seed"]:
        assert len(s["val_loss_by_gamma"]) == len(p["gammas"]) == len(s["theta_norm"])
        assert [v["step"] for v in s["val"]] == [3, 6] and s["status"] == "finished"
    assert a["val"][-1]["val_loss"] == pytest.approx(sum(s["final_val_loss"] for s in p["per_seed"]) / 3)
    assert p["effective"]["variant"] == "mip" and p["primary_params"] == 13130
    assert a["data"]["source"] == "digits" and len(a["data"]["sha256"]) == 64


# --------------------------------------------------------------------------- notebook measurements


def test_steps_to_threshold_interpolates_and_reports_never():
    val = [{"step": 25, "val_loss": 2.0}, {"step": 50, "val_loss": 1.2}, {"step": 75, "val_loss": 0.8}]
    assert steps_to_threshold(val, 1.0) == pytest.approx(62.5)
    assert steps_to_threshold(val, 2.5) == 25
    assert math.isnan(steps_to_threshold(val, 0.5))
    assert math.isnan(steps_to_threshold([{"step": 5, "val_loss": float("nan")}], 1.0))
    assert loglog_slope([0.1, 1, 10], [0.01, 1, 100]) == pytest.approx(2.0)


def test_primary_module_baseline_trains_the_same_functional_network():
    spec = PrimaryNet(**MLP)
    net = PrimaryModule(spec, torch.Generator().manual_seed(0))
    assert net.flat.numel() == spec.n_params and net(images()).shape == (6, 10)


# --------------------------------------------------------------------------- claim estimates


def test_cell_fraction_is_a_wilson_interval_over_cells():
    from replicate.papers.hypernet_mip.analysis import cell_fraction

    est = cell_fraction([True] * 24)
    assert est.value == 1.0 and est.n == 24
    assert est.interval[0] == pytest.approx(24 / (24 + 1.959964 ** 2), rel=1e-5)  # Wilson at p = 1
    assert est.interval[0] >= 0.85  # so ">= 0.85" is replicated only when every one of 24 cells counts
    assert cell_fraction([True] * 23 + [False]).interval[0] < 0.85
    assert cell_fraction([True, float("nan"), False]).n == 2  # cells that say nothing are dropped


def test_slope_over_seeds_fits_each_seed_and_averages():
    import pandas as pd

    from replicate.papers.hypernet_mip.analysis import slope_over_seeds

    g = [0.1, 1.0, 10.0]
    init = pd.DataFrame([{"variant": "a", "seed": s, "gamma": x, "q": x ** p}
                         for s, p in ((0, 1.0), (1, 2.0), (2, -3.0)) for x in g])
    est = slope_over_seeds(init, "a", "q")
    assert est.units == pytest.approx((1.0, 2.0, -3.0)) and est.value == pytest.approx(0.0)
    assert slope_over_seeds(init, "a", "q", absolute=True).value == pytest.approx(2.0)
    assert est.n == 3 and "init seeds" in est.method


def test_hyperlight_init_gives_each_primary_tensor_its_own_fan_out_std():
    spec = PrimaryNet(arch="mlp", in_shape=(1, 16, 16), hidden=(64,))  # fc0.weight 64x256, fc0.bias 64, ...
    torch.manual_seed(0)
    m = HyperModel(spec, "default", hidden=(256, 256), activation="leakyrelu")  # init: hyperlight
    # hand computation: LeakyReLU gain under Kaiming's default a = 0 is sqrt(2); fan-out of a block
    # of rows = its rows = the predicted tensor's numel (hyperlight HyperNet._init_output_split)
    expected = {"fc0.weight": math.sqrt(2) / math.sqrt(64 * 256), "fc0.bias": math.sqrt(2) / 8.0,
                "fc1.weight": math.sqrt(2) / math.sqrt(10 * 64), "fc1.bias": math.sqrt(2) / math.sqrt(10)}
    assert m.hyper.block_stds() == pytest.approx(expected)
    offset = 0
    for name, size in zip(spec.shapes, spec.sizes):
        block = m.hyper.out.weight[offset:offset + size]
        assert block.std().item() == pytest.approx(expected[name], rel=0.05 if size > 500 else 0.1), name
        offset += size
    assert torch.count_nonzero(m.hyper.out.bias) == 0
    # the one-block init it replaces: std 1/sqrt(P) for every block
    torch.manual_seed(0)
    old = HyperModel(spec, "default", hidden=(256, 256), init="oneblock")
    assert old.hyper.out.weight.std().item() == pytest.approx(1 / math.sqrt(spec.n_params), rel=0.02)
    assert 1 / math.sqrt(spec.n_params) < min(expected.values())


def test_scaled_init_gives_theta_at_gamma_one_the_primary_nets_scale():
    from replicate.papers.hypernet_mip.model import primary_init_norm

    spec = PrimaryNet(**MLP)
    gain = math.sqrt(2.0 / (1 + 0.01 ** 2))  # torch's LeakyReLU gain (slope 0.01)
    assert primary_init_norm((16, 64)) == pytest.approx(math.sqrt(16 * 64) * gain / math.sqrt(64))
    assert primary_init_norm((16,)) == 0.0
    for variant in ("default", "encoding"):
        m = model(variant, init="scaled")
        theta = m.params(torch.ones(1))
        for name, shape in spec.shapes.items():
            assert theta[name].norm().item() == pytest.approx(primary_init_norm(shape), rel=1e-4, abs=1e-6), name
    with pytest.raises(ValueError, match="scaled"):
        model("mip", init="scaled")
    m = model("default", init="scaled")  # still exactly proportional
    torch.testing.assert_close(m.flat_params(torch.tensor([0.1])), 0.1 * m.flat_params(torch.ones(1)))


def test_seeds_trained_side_by_side_equal_seeds_trained_alone():
    from replicate.papers.hypernet_mip.data import SeedStackedDigits
    from replicate.data.digits import DigitsDataModule

    dm = SeedStackedDigits(seeds=[3, 5], batch_size=8, max_steps=4)
    dm.setup()
    batches = list(dm.train_dataloader())
    assert len(batches) == 4 and batches[0][0].shape == (2, 8, 1, 8, 8) and batches[0][1].shape == (2, 8)
    for s, seed in enumerate((3, 5)):
        alone = DigitsDataModule(seed=seed, batch_size=8, max_steps=4)
        alone.setup()
        for (x, y), (xs, ys) in zip(alone.train_dataloader(), batches):
            assert torch.equal(x, xs[s]) and torch.equal(y, ys[s])
    assert next(iter(dm.val_dataloader()))[0].shape[0] == len(dm.val_dataset())  # one batch

    def trained(seeds):
        m = module(seeds=seeds, variant="mip")
        m.log = lambda *a, **k: None
        opt = m.configure_optimizers()
        for x, y in batches[:3]:
            idx = [(3, 5).index(s) for s in seeds]
            opt.zero_grad()
            m.training_step((x[idx], y[idx]), 0).backward()
            opt.step()
        return m

    both, a, b = trained([3, 5]), trained([3]), trained([5])
    for alone, stacked in ((a.models[0], both.models[0]), (b.models[0], both.models[1])):
        for (n, p), q in zip(alone.named_parameters(), stacked.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)


def test_a_diverged_seed_is_dropped_and_recorded_while_the_others_train():
    m = module(seeds=[0, 1], variant="default")
    m.log = lambda *a, **k: None
    with torch.no_grad():
        m.models[1].hyper.out.weight.fill_(float("nan"))
    x, y = images(8).expand(2, 8, 1, 8, 8), (torch.arange(8) % 10).expand(2, 8)
    loss = m.training_step((x, y), 0)
    assert torch.isfinite(loss) and m.seed_state["diverged_at_step"] == [None, 0]
    loss.backward()
    assert m.models[1].hyper.out.weight.grad is None and m.models[0].hyper.out.weight.grad is not None


def test_full_scale_reads_mnist_from_a_local_path_and_names_missing_files(tmp_path):
    from hydra.utils import instantiate
    from pathlib import Path

    from replicate.config import ConfigError

    fixture = Path(__file__).parent / "fixtures" / "mnist_tiny"
    cfg = C.compose("hypernet_mip/convergence", "cpu", "full", [f"figure.run.data.path={fixture}"])
    run_cfg = C.run_config(cfg, 0)
    assert run_cfg.run.data.source == "mnist" and run_cfg.run.data.download is False
    dm = instantiate(run_cfg.run.data, _convert_="all")
    dm.setup()
    assert dm.image_shape == (1, 28, 28) and next(iter(dm.train_dataloader()))[0].shape[:2] == (13, 128)  # 13 seeds
    missing = instantiate(C.run_config(C.compose("hypernet_mip/convergence", "cpu", "full",
                                                 [f"figure.run.data.path={tmp_path}"]), 0).run.data, _convert_="all")
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte"):
        missing.prepare_data()


def test_expand_seeds_gives_one_row_per_run_and_seed(tmp_path):
    from replicate.papers.hypernet_mip.analysis import curve_table, expand_seeds

    cfg = C.compose("hypernet_mip/convergence", "cpu", "smoke", ["figure.run.trainer.max_steps=4",
                                                                 "figure.run.trainer.val_check_interval=2"])
    point = [i for i, p in enumerate(C.points(cfg)) if p["module.variant"] == "default"
             and p["module.setting"] == {"optim": {"lr": 1.0e-3}}][0]
    run_cfg = C.run_config(cfg, point)
    runs.ensure(run_cfg, tmp_path)
    import pandas as pd

    frame = pd.DataFrame([{"point": point, "variant": "default", "setting": {"optim": {"lr": 1.0e-3}},
                           "seeds": [0, 1, 100], "run_dir": str(runs.run_dir(tmp_path, run_cfg)),
                           **runs.read_metrics(runs.run_dir(tmp_path, run_cfg))}])
    per_seed = expand_seeds(frame, cfg)
    assert per_seed.seed.tolist() == [0, 1, 100] and set(per_seed.variant) == {"default"}
    assert [len(v) for v in per_seed.val] == [2, 2, 2] and per_seed.val[0] != per_seed.val[1]
    t = curve_table(per_seed, [9.0, 8.0], 4)
    assert t.reached.all() and t.regime.tolist() == ["noise"] * 3 and t.lr.tolist() == [1.0e-3] * 3
    assert t.steps_censored.tolist() == [(2.0, 2.0)] * 3  # already below both at the first validation


def test_a_resumed_run_continues_every_seed_exactly(tmp_path):
    import shutil

    from replicate import train

    over = ["figure.run.trainer.val_check_interval=2", "figure.run.trainer.log_every_n_steps=1"]
    whole, half = (C.run_config(C.compose("hypernet_mip/convergence", "cpu", "smoke",
                                          [f"figure.run.trainer.max_steps={n}", *over]), 1) for n in (4, 2))
    a = train.fit(whole, tmp_path / "a")
    train.fit(half, tmp_path / "half")
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "half" / "checkpoints" / "last.ckpt", tmp_path / "b" / "checkpoints" / "last.ckpt")
    b = train.fit(whole, tmp_path / "b")  # resumes at step 2: per-seed history and data stream continue
    assert [v["step"] for v in b["probes"]["per_seed"][1]["val"]] == [2, 4]
    for key in ("train", "val", "probes"):
        assert a[key] == b[key], key


# --------------------------------------------------------------------------- measures (one per figure)
import functools  # noqa: E402

import pandas as pd  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from replicate import claims as claims_lib  # noqa: E402
from replicate.papers.hypernet_mip import measures  # noqa: E402


@functools.lru_cache(maxsize=None)
def _figure(figure, scale="default", overrides=()):
    """The composed config and every key a claim of ``figure`` reads (``measured`` and ``requires``)."""
    cfg = C.compose(f"hypernet_mip/{figure}", "cpu", scale, list(overrides))
    specs = OmegaConf.to_container(cfg.figure.claims)
    return cfg, {s["measured"] for s in specs} | {k for s in specs for k in (s.get("requires") or {})}


def _curve(step, threshold):
    """Validation every 10 steps at loss 2 until ``step``, where it is ``threshold`` (reached at
    exactly ``step``); ``None``: never reached."""
    if step is None:
        return [{"step": 10 * j, "val_loss": 2.0} for j in (1, 2)]
    return [{"step": 10 * j, "val_loss": 2.0} for j in range(1, step // 10)] + [{"step": step, "val_loss": threshold}]


def _mip_runs(spec, threshold):
    """A stand-in for ``ctx.runs()``: one run per (variant, setting, per-seed (steps to
    ``threshold[regime]`` or None, final loss)) of ``spec``."""
    rows = []
    for variant, setting, seeds in spec:
        regime = setting.get("task", {}).get("kind", "noise")
        thr = threshold[regime] if isinstance(threshold, dict) else threshold
        per_seed = [{"seed": s, "status": "finished", "val": _curve(steps, thr), "final_val_loss": final}
                    for s, (steps, final) in enumerate(seeds)]
        rows.append({"variant": variant, "setting": setting, "run_dir": f"run-{variant}-{len(rows)}",
                     "status": "finished", "probes": {"per_seed": per_seed}})
    return pd.DataFrame(rows)


TINY = ("figure.run.module.hyper.hidden=[8]", "figure.run.module.primary.hidden=[4]",
        "figure.measure.init_seeds=3", "figure.measure.gammas=[0.1,0.3,1.0]",
        "figure.measure.input_dims=[1,2]", "figure.measure.random_gammas=3")


def test_proportionality_measures_are_slopes_per_init_seed():
    cfg, keys = _figure("proportionality", "smoke", TINY)
    m = measures.proportionality(pd.DataFrame(), cfg)  # nothing trained is read
    assert keys <= set(m)
    default = m["slope_theta_default"]  # zero-bias ReLU-family hypernetwork: exactly proportional
    assert default.n == 3 and default.units == pytest.approx((1.0,) * 3, abs=1e-6)
    assert default.value == pytest.approx(1.0, abs=1e-6) and default.interval[0] <= 1.0 + 1e-6
    for key in ("slope_theta_default_oneblock", "slope_theta_default_scaled"):
        assert m[key].value == pytest.approx(1.0, abs=1e-6)
    assert m["slope_delta_residual"] == pytest.approx(1.0, abs=1e-6)  # theta0 + h(gamma): h proportional
    flat = m["abs_slope_theta_mip"]
    assert flat.units == pytest.approx(tuple(abs(u) for u in flat.units)) and flat.n == 3
    assert abs(m["slope_delta_mip"].value) < 0.5  # constant-norm encoding: the term does not scale
    assert measures.proportionality(pd.DataFrame(), cfg)["slope_delta_mip"].units == m["slope_delta_mip"].units


# --------------------------------------------------------------------------- hyperlight's init rule


def _hyperlight_initialize_weight(weight, nonlinearity):
    """JJGO/hyperlight hyperlight/hypernet/initialization.py ``initialize_weight`` with its default
    distribution ``kaiming_normal_fanout``, transcribed: the class name lower-cased, LeakyReLU ->
    leaky_relu, SiLU/GELU borrow leaky_relu, then ``kaiming_normal_(mode="fan_out")``."""
    name = nonlinearity.lower()
    name = {"leakyrelu": "leaky_relu", "silu": "leaky_relu", "gelu": "leaky_relu"}.get(name, name)
    nn.init.kaiming_normal_(weight, nonlinearity=name, mode="fan_out")


HYPERLIGHT_NAMES = {"leakyrelu": "LeakyReLU", "relu": "ReLU", "tanh": "Tanh", "gelu": "GELU"}
NOISE_MLP = dict(arch="mlp", in_shape=(1, 8, 8), hidden=(64, 64, 64))     # the figures' primary net
NOISE_CNN = dict(arch="cnn", in_shape=(1, 8, 8), channels=(8, 16))       # the ablations' CNN cell
L2_MLP = dict(arch="mlp", in_shape=(1, 8, 8), hidden=(64,))               # the L2 regime's primary net
R2 = math.sqrt(2)
# hand-computed: std = gain / sqrt(rows of the block) = gain / sqrt(numel of the predicted tensor);
# gain sqrt(2) for LeakyReLU (kaiming_normal_'s default a = 0), ReLU and GELU (-> leaky_relu), 5/3 for Tanh
EXPECTED_STDS = {
    ("mlp", "leakyrelu"): {"fc0.weight": R2 / 64, "fc0.bias": R2 / 8, "fc1.weight": R2 / 64, "fc1.bias": R2 / 8,
                           "fc2.weight": R2 / 64, "fc2.bias": R2 / 8, "fc3.weight": R2 / math.sqrt(640),
                           "fc3.bias": R2 / math.sqrt(10)},
    ("mlp", "tanh"): {"fc0.weight": 5 / 3 / 64, "fc0.bias": 5 / 3 / 8, "fc1.weight": 5 / 3 / 64, "fc1.bias": 5 / 3 / 8,
                      "fc2.weight": 5 / 3 / 64, "fc2.bias": 5 / 3 / 8, "fc3.weight": 5 / 3 / math.sqrt(640),
                      "fc3.bias": 5 / 3 / math.sqrt(10)},
    ("cnn", "leakyrelu"): {"conv0.weight": 1 / 6, "conv0.bias": 0.5, "conv1.weight": 1 / 24, "conv1.bias": R2 / 4,
                           "fc.weight": 1 / math.sqrt(1280), "fc.bias": R2 / math.sqrt(10)},
    ("l2", "leakyrelu"): {"fc0.weight": R2 / 64, "fc0.bias": R2 / 8, "fc1.weight": R2 / math.sqrt(640),
                          "fc1.bias": R2 / math.sqrt(10)},
}
EXPECTED_STDS[("mlp", "relu")] = EXPECTED_STDS[("mlp", "gelu")] = EXPECTED_STDS[("mlp", "leakyrelu")]


@pytest.mark.parametrize("primary,activation", [("mlp", "leakyrelu"), ("mlp", "relu"), ("mlp", "tanh"),
                                                ("mlp", "gelu"), ("cnn", "leakyrelu"), ("l2", "leakyrelu")])
@pytest.mark.parametrize("variant", ["default", "mip"])
def test_default_init_matches_hyperlights_rule_for_every_output_tensor(primary, activation, variant):
    spec = PrimaryNet(**{"mlp": NOISE_MLP, "cnn": NOISE_CNN, "l2": L2_MLP}[primary])
    expected = EXPECTED_STDS[(primary, activation)]
    assert set(expected) == set(spec.shapes)  # every predicted tensor has a hand-computed std
    torch.manual_seed(0)
    m = HyperModel(spec, variant, hidden=(128, 128), activation=activation)  # init: hyperlight (the default)
    h = m.hyper
    assert h.block_stds() == pytest.approx(expected, rel=1e-12)
    gain = {"tanh": 5 / 3}.get(activation, R2)
    for layer in (h.body[0], h.body[2]):  # hidden layers: Kaiming fan-out = out features (128), zero biases
        assert layer.weight.std().item() == pytest.approx(gain / math.sqrt(128), rel=0.3 if layer.in_features < 4 else 0.05)
        assert torch.count_nonzero(layer.bias) == 0
    for name, shape, rows in h.block_slices():  # the drawn rows have their tensor's std
        block = h.out.weight[rows]
        assert block.shape == (math.prod(shape), 128)
        assert block.std().item() == pytest.approx(expected[name], rel=0.1 if block.numel() < 5000 else 0.03), name
    # the same draws as hyperlight's own rule applied to each layer and each block in turn
    h2 = HyperNet(h.input_dim, h.n_out, hidden=(128, 128), activation=activation,
                  encoding=h.encoding, blocks=h.blocks)
    state = torch.random.get_rng_state()
    h2.reset_parameters()
    mine = [p.detach().clone() for p in h2.parameters()]
    torch.random.set_rng_state(state)
    with torch.no_grad():
        for layer in (h2.body[0], h2.body[2]):
            _hyperlight_initialize_weight(layer.weight, HYPERLIGHT_NAMES[activation])
            layer.bias.zero_()
        for _, _, rows in h2.block_slices():  # HyperNet._init_output_split: one block of rows per tensor
            _hyperlight_initialize_weight(h2.out.weight[rows], HYPERLIGHT_NAMES[activation])
        h2.out.bias.zero_()
    for a, b in zip(mine, h2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# --------------------------------------------------------------------------- claim estimates


def test_curve_stats_area_final_window_and_plateau_drop():
    from replicate.papers.hypernet_mip.analysis import curve_stats

    val = [{"step": s, "val_loss": v} for s, v in ((25, 2.0), (50, 1.0), (75, 0.8), (100, 0.6))]
    out = curve_stats(val, 100, 0.25)
    assert out["auc"] == pytest.approx((1.5 + 0.9 + 0.7) * 25 / 75)  # trapezoids over 25..100
    assert out["final"] == pytest.approx(0.6) and out["plateau_drop"] == pytest.approx(0.8 - 0.6)
    out = curve_stats(val, 100, 0.5)  # last half (50, 100]: 0.8, 0.6; before it (0, 50]: 2.0, 1.0
    assert out["final"] == pytest.approx(0.7) and out["plateau_drop"] == pytest.approx(1.5 - 0.7)
    bad = curve_stats(val[:2] + [{"step": 75, "val_loss": float("nan")}], 100)
    assert math.isinf(bad["auc"]) and math.isinf(bad["final"])


def _table_rows(spec):
    """A curve_table-like frame from (regime, variant, lr, seed, auc, final, steps tuple)."""
    import pandas as pd

    return pd.DataFrame([{"regime": r, "variant": v, "lr": lr, "seed": s, "status": "finished", "auc": a,
                          "final": f, "plateau_drop": 0.0, "steps": st, "steps_censored": st,
                          "reached": True} for r, v, lr, s, a, f, st in spec])


def test_lr_selection_reads_only_the_selection_seeds():
    from replicate.papers.hypernet_mip.analysis import evaluation_rows, lr_selection

    spec = [("noise", "default", lr, s, a, 0.0, (1.0,)) for lr, aucs in
            ((1e-3, (1.0, 1.2)), (3e-3, (0.9, 1.0)), (1e-2, (1.0, 1.1))) for s, a in zip((100, 101), aucs)]
    spec += [("noise", "default", 1e-3, s, 0.1, 0.5, (1.0,)) for s in (0, 1)]  # evaluation seeds: never read
    t = _table_rows(spec)
    out = lr_selection(t, "noise", "default", 1e-3, [100, 101])
    assert out["best_lr"] == 3e-3 and out["interior"] == 1.0
    assert out["rel_gap"] == pytest.approx(1.1 / 0.95 - 1)
    assert lr_selection(t, "noise", "default", 3e-3, [100, 101])["rel_gap"] == 0.0
    edge = lr_selection(t[t.lr != 1e-2], "noise", "default", 3e-3, [100, 101])
    assert math.isnan(edge["interior"])  # two rates cannot bracket
    edge = lr_selection(t[t.lr != 1e-3], "noise", "default", 3e-3, [100, 101])
    assert edge["best_lr"] == 3e-3
    t.loc[(t.lr == 3e-3) & (t.seed == 100), "auc"] = math.inf  # a diverged selection seed disqualifies its lr
    assert lr_selection(t, "noise", "default", 1e-3, [100, 101])["best_lr"] == 1e-2
    ev = evaluation_rows(t, "noise", "default", 1e-3, [100, 101])
    assert list(ev.index) == [0, 1] and (ev.final == 0.5).all()


def test_speedup_curve_is_the_per_seed_geometric_mean_over_thresholds():
    from replicate.papers.hypernet_mip.analysis import evaluation_rows, paired_gain, speedup_curve

    base = {0: (40, 100), 1: (30, 90), 2: (60, 200)}
    var = {0: (10, 50), 1: (15, 45), 2: (20, 200), 3: (5, 5)}  # seed 3 has no default: not paired
    t = _table_rows([("noise", "default", 1e-3, s, 1.0, 1.0 + 0.1 * s, st) for s, st in base.items()]
                    + [("noise", "mip", 1e-3, s, 1.0, 0.9, st) for s, st in var.items()])
    d, m = (evaluation_rows(t, "noise", v, 1e-3, []) for v in ("default", "mip"))
    overall, per_thr = speedup_curve(d, m)
    for est, ratios in zip(per_thr, ((4, 2, 3), (2, 2, 1))):
        value, interval = _log_t(ratios)
        assert est.units == pytest.approx(ratios) and est.value == pytest.approx(value)
        assert est.interval == pytest.approx(interval)
    per_seed = (math.sqrt(8), 2.0, math.sqrt(3))
    value, interval = _log_t(per_seed)
    assert overall.units == pytest.approx(per_seed) and overall.value == pytest.approx(value)
    assert overall.interval == pytest.approx(interval) and overall.estimator["name"] == "t_log_mean"
    gain = paired_gain(d, m)
    assert gain.units == pytest.approx((0.1, 0.2, 0.3)) and gain.value == pytest.approx(0.2)


def _log_t(ratios):
    from scipy import stats

    logs = np.log(ratios)
    half = stats.t.ppf(0.975, len(logs) - 1) * logs.std(ddof=1) / math.sqrt(len(logs))
    return math.exp(logs.mean()), (math.exp(logs.mean() - half), math.exp(logs.mean() + half))


def _cells_table(gains, steps=None):
    """An ablation_table-like frame: per cell (arch) and seed, default final 1.0 and MIP 1.0 - gain."""
    import pandas as pd

    rows = []
    for cell, per_seed in gains.items():
        for seed, g in enumerate(per_seed):
            sd, sm = (steps or {}).get(cell, (100.0, 50.0))
            rows += [{"arch": cell, "variant": "default", "seed": seed, "final": 1.0, "steps1": sd,
                      "steps_censored": (300.0,), "diverged": False},
                     {"arch": cell, "variant": "mip", "seed": seed, "final": 1.0 - g, "steps1": sm,
                      "steps_censored": (300.0,), "diverged": False}]
    return pd.DataFrame(rows)


def test_a_consistent_reversal_in_one_cell_decides_the_universal_claim():
    from replicate import claims
    from replicate.papers.hypernet_mip.analysis import cell_outcomes, weakest_cell

    gains = {"a": (0.3, 0.4, 0.5, 0.35), "b": (-0.2, -0.25, -0.3, -0.22), "c": (0.1, -0.1, 0.05, -0.05)}
    cells = cell_outcomes(_cells_table(gains), 300, keys=["arch"], level=1 - 0.05 / 3).set_index("arch")
    assert cells.status.tolist() == ["MIP better", "MIP worse", "unresolved"]
    assert cells.gain["a"] == pytest.approx(0.3875) and cells.loss_mip["b"] == pytest.approx(1.2425)
    assert cells.sim_est["a"].estimator["level"] == pytest.approx(1 - 0.05 / 3)
    assert cells.sim_lo["a"] < cells.gain_lo["a"]  # the simultaneous interval is wider
    assert cells.speedup.tolist() == pytest.approx([2.0, 2.0, 2.0])
    rules = ("> 0.02", "> 0")

    def verdict(which):
        ests = [cells.sim_est[c] for c in which]
        k = weakest_cell(ests, 0.02)
        return which[k], claims.judge(ests[k].value, ests[k].interval, *rules)[0]

    assert verdict(["a", "b", "c"]) == ("b", "not_replicated")   # one reversal is a counterexample
    assert verdict(["a", "c"]) == ("c", "undecided")             # the widest doubt decides
    assert verdict(["a"]) == ("a", "replicated")
    # hand-made intervals reach the other verdicts through the same rule
    est = lambda lo, hi: claims.Estimate((lo + hi) / 2, (lo, hi), 10)  # noqa: E731
    k = weakest_cell([est(0.3, 0.5), est(0.005, 0.2)], 0.02)
    assert k == 1 and claims.judge(0.1, (0.005, 0.2), *rules)[0] == "partial"
    k = weakest_cell([est(-1.0, 2.0), est(-0.3, -0.1)], 0.02)
    assert k == 1  # a reversed cell is chosen even when another cell's interval reaches lower


def test_tuned_lr_gain_compares_each_variant_at_its_own_best_lr():
    import pandas as pd

    from replicate.papers.hypernet_mip.analysis import CELL_KEYS, tuned_lr_gain

    base = {"optimizer": "adam", "lr": 1e-3, "activation": "leakyrelu", "input_dim": 1, "norm": "none", "arch": "mlp"}
    finals = {("default", 1e-3): (1.0, 1.1), ("default", 3e-3): (0.8, 0.9), ("default", 1e-2): (0.95, 1.0),
              ("mip", 1e-3): (0.7, 0.75), ("mip", 3e-3): (0.6, 0.7), ("mip", 1e-2): (0.9, 0.9)}
    rows = [{**base, "lr": lr, "variant": v, "seed": s, "final": f} for (v, lr), fs in finals.items()
            for s, f in enumerate(fs)]
    rows.append({**base, "activation": "relu", "variant": "mip", "seed": 0, "final": 0.0})  # another block
    out = tuned_lr_gain(pd.DataFrame(rows), "adam", base, CELL_KEYS)
    assert out["best_lr_default"] == 3e-3 and out["best_lr_mip"] == 3e-3
    assert out["interior_default"] == 1.0 and out["interior_mip"] == 1.0
    assert out["gain"].units == pytest.approx((0.2, 0.2)) and out["gain"].value == pytest.approx(0.2)
    out = tuned_lr_gain(pd.DataFrame([r for r in rows if r["lr"] != 1e-2]), "adam", base, CELL_KEYS)
    assert math.isnan(out["interior_mip"])


# --------------------------------------------------------------------------- measures on synthetic runs


def _linear(rate, floor, max_steps, every):
    """Validation every ``every`` steps of a loss falling linearly from 2.0 at ``rate`` per step to
    ``floor``: it crosses a threshold t above the floor at step (2 - t) / rate exactly."""
    return [{"step": s, "val_loss": max(floor, 2.0 - rate * s)} for s in range(every, max_steps + 1, every)]


def _synthetic_runs(spec, max_steps, every):
    """A stand-in for ``ctx.runs()``: one run per (variant, setting, {seed: (rate, floor)})."""
    rows = []
    for variant, setting, seeds in spec:
        per_seed = [{"seed": s, "status": "finished", "val": _linear(r, f, max_steps, every),
                     "final_val_loss": _linear(r, f, max_steps, every)[-1]["val_loss"]} for s, (r, f) in seeds.items()]
        rows.append({"variant": variant, "setting": setting, "seeds": list(seeds), "run_dir": f"run-{len(rows)}",
                     "status": "finished", "probes": {"per_seed": per_seed}})
    return pd.DataFrame(rows)


def _convergence_spec(cfg, mip_rates, default_rates):
    """Every run of the default-scale sweep: the claim rate of each variant learns fastest on the
    selection seeds; evaluation seeds get the given rates (default) and MIP's per seed, and floors
    0.5 below the lowest threshold (MIP's 0.03 lower), so each crossing lies on a straight segment."""
    m = cfg.figure.measure
    sel = list(m.selection_seeds)
    spec = []
    for regime in ("noise", "l2"):
        low = min(m.thresholds[regime]) - 0.5
        floors = (low, low - 0.03)
        task = {} if regime == "noise" else {"task": {"kind": "l2"}, "primary": {"hidden": [64]}}
        for v in ("default", "encoding", "residual", "mip"):
            claim = float(m.lr[regime][v])
            for lr in (claim / 3, claim, claim * 3):
                seeds = {s: (0.004 if lr == claim else 0.003, 0.7) for s in sel}
                if lr == claim:
                    n = 10 if v in ("default", "mip") else 5
                    rates = default_rates if v == "default" else (mip_rates if v == "mip" else default_rates)
                    seeds = {**{s: (rates[s], floors[0] if v == "default" else floors[1]) for s in range(n)}, **seeds}
                spec.append((v, {**task, "optim": {"lr": lr}}, seeds))
    return spec


def test_convergence_measures_read_each_variant_at_its_own_lr():
    cfg, keys = _figure("convergence")
    default_rates = [0.004 + 0.0001 * s for s in range(10)]
    mip_rates = [2 * r if s % 2 else 3 * r for s, r in enumerate(default_rates)]  # per seed 3x or 2x faster
    runs_table = _synthetic_runs(_convergence_spec(cfg, mip_rates, default_rates), 1000, 25)
    m = measures.convergence(runs_table, cfg)
    assert keys <= set(m)
    per_seed = tuple(3.0 if s % 2 == 0 else 2.0 for s in range(10))
    for regime in ("noise", "l2"):
        est, (value, interval) = m[f"speedup_mip_{regime}"], _log_t(per_seed)
        assert est.units == pytest.approx(per_seed) and est.value == pytest.approx(value), regime
        assert est.interval == pytest.approx(interval)
        for t in cfg.figure.measure.thresholds[regime]:
            assert m[f"speedup_mip_{regime}_{measures.threshold_key(t)}"].units == pytest.approx(per_seed, rel=1e-9)
        assert m[f"speedup_encoding_{regime}"].units == pytest.approx((1.0,) * 5)  # encoding runs like the default
        gain = m[f"final_gain_{regime}"]
        assert gain.n == 10 and gain.value == pytest.approx(0.03) and gain.units == pytest.approx((0.03,) * 10)
        assert 0 <= m[f"default_plateau_drop_{regime}"] < 0.02  # flat (noise) or nearly (l2) over the last half
        for v in ("default", "encoding", "residual", "mip"):
            assert m[f"{v}_lr_rel_gap_{regime}"] == 0.0 and m[f"{v}_lr_interior_{regime}"] == 1.0
        assert m[f"n_seeds_default_{regime}"] == 10 and m[f"n_seeds_encoding_{regime}"] == 5
    verdicts = {c.id: c.verdict for c in claims_lib.evaluate(OmegaConf.to_container(cfg.figure.claims), m)}
    assert verdicts["mip_faster_noise"] == "replicated" and verdicts["mip_lower_final_loss_noise"] == "replicated"
    assert verdicts["encoding_alone_faster_l2"] == "not_replicated"  # exactly 1x: excluded from > 1
    # the selection seeds are never read: giving them absurd curves changes no claim number
    spec = _convergence_spec(cfg, mip_rates, default_rates)
    shuffled = measures.convergence(_synthetic_runs(spec[::-1], 1000, 25), cfg)
    assert shuffled["speedup_mip_noise"].units == m["speedup_mip_noise"].units
    # a rate that is not the validation choice makes every claim reading it inconclusive
    for v, setting, seeds in spec:
        if v == "mip" and setting["optim"]["lr"] == 3 * float(cfg.figure.measure.lr.noise.mip) and "task" not in setting:
            seeds.update({s: (0.006, 0.7) for s in cfg.figure.measure.selection_seeds})
    m2 = measures.convergence(_synthetic_runs(spec, 1000, 25), cfg)
    assert m2["mip_best_lr_noise"] == pytest.approx(3e-3) and m2["mip_lr_rel_gap_noise"] > 0.02
    verdicts = {c.id: c.verdict for c in claims_lib.evaluate(OmegaConf.to_container(cfg.figure.claims), m2)}
    assert verdicts["mip_faster_noise"] == "inconclusive" and verdicts["mip_faster_l2"] == "replicated"
    # a default still falling in its last quarter: the final-loss claim is not judged
    slow = _convergence_spec(cfg, mip_rates, [0.0014] * 10)
    m3 = measures.convergence(_synthetic_runs(slow, 1000, 25), cfg)
    assert m3["default_plateau_drop_noise"] > 0.02
    verdicts = {c.id: c.verdict for c in claims_lib.evaluate(OmegaConf.to_container(cfg.figure.claims), m3)}
    assert verdicts["mip_lower_final_loss_noise"] == "inconclusive"
    # a smaller sweep (no residual run): every key still comes back, NaN where a variant did not run
    smaller = measures.convergence(runs_table[runs_table.variant != "residual"].reset_index(drop=True), cfg)
    assert keys <= set(smaller) and math.isnan(smaller["speedup_residual_noise"].value)
    assert math.isnan(smaller["residual_reached_frac_noise"])


def test_ablation_measures_name_the_weakest_cell():
    cfg, keys = _figure("ablations")  # threshold 1.5, tie 0.02, 200 steps validated every 25
    seeds = range(10)
    base = {s: (0.004, 0.9) for s in seeds}
    spec = [("default", {}, base), ("mip", {}, {s: (0.008, 0.8 - 0.005 * s) for s in seeds}),
            ("default", {"hyper": {"norm": "layer"}}, {s: (0.008, 0.7) for s in seeds}),          # MIP worse here
            ("mip", {"hyper": {"norm": "layer"}}, {s: (0.0075, 0.8 + 0.002 * s) for s in seeds}),
            ("default", {"optim": {"name": "sgd", "lr": 1.0e-2}}, {s: (0.0, 2.3) for s in seeds}),  # never learns
            ("mip", {"optim": {"name": "sgd", "lr": 1.0e-2}}, {s: (0.004, 0.9) for s in seeds})]
    m = measures.ablations(_synthetic_runs(spec, 200, 25), cfg)
    assert keys <= set(m)
    assert (m["n_cells"], m["n_cells_mip_better"], m["n_cells_mip_worse"]) == (3, 2, 1)
    worst = m["gain_weakest_cell"]  # the LayerNorm cell: default 0.7, MIP 0.8 + 0.002 s (both at their floor)
    assert worst.units == pytest.approx(tuple(-0.1 - 0.002 * s for s in seeds))
    assert worst.estimator["level"] == pytest.approx(1 - 0.05 / 3)
    speed = m["speedup_weakest_cell"]  # LayerNorm: loss 1.5 at step 62.5 (default) and 66.7 (MIP)
    assert speed.units == pytest.approx((62.5 / (0.5 / 0.0075),) * 10)
    verdicts = {c.id: c.verdict for c in claims_lib.evaluate(OmegaConf.to_container(cfg.figure.claims), m)}
    assert verdicts["mip_better_every_cell"] == "not_replicated"
    assert verdicts["mip_faster_every_cell"] == "not_replicated"
    assert verdicts["mip_better_at_tuned_sgd_lr"] == "inconclusive"  # one SGD rate: no bracket
    gain = m["mean_gain_over_seeds"]  # per seed mean over the three cells
    # per seed: base 1.25 (mean of 1.3 and 1.2 in the last quarter) - (0.8 - 0.005 s); LayerNorm; SGD 2.3 - 1.25
    assert gain.units == pytest.approx(tuple(((0.45 + 0.005 * s) + (-0.1 - 0.002 * s) + 1.05) / 3 for s in seeds))
