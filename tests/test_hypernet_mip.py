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
    run_cfg = C.run_config(cfg, 2)  # noise regime, MIP, seeds 0 and 1 side by side
    assert run_cfg.run.module.variant == "mip" and list(run_cfg.run.module.seeds) == [0, 1]
    a = runs.read_metrics(runs.ensure(run_cfg, tmp_path / "a"))
    b = runs.read_metrics(runs.ensure(run_cfg, tmp_path / "b"))
    assert a["status"] == "finished" and a["steps"] == 6 and [v["step"] for v in a["val"]] == [3, 6]
    for key in ("train", "val", "probes"):
        assert a[key] == b[key], key
    p = a["probes"]
    assert [s["seed"] for s in p["per_seed"]] == [0, 1]
    for s in p["per_seed"]:
        assert len(s["val_loss_by_gamma"]) == len(p["gammas"]) == len(s["theta_norm"])
        assert [v["step"] for v in s["val"]] == [3, 6] and s["status"] == "finished"
    assert a["val"][-1]["val_loss"] == pytest.approx(sum(s["final_val_loss"] for s in p["per_seed"]) / 2)
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


def _runs_frame(rows):
    """A stand-in for ``expand_seeds``'s rows: (variant, seed, val curve, final loss, status) per run and seed."""
    import pandas as pd

    return pd.DataFrame([{"run_dir": f"run{i}", "regime": "noise", "variant": v, "seed": s, "status": st,
                          "final_val_loss": f, "val": [{"step": 10 * (j + 1), "val_loss": x} for j, x in enumerate(c)]}
                         for i, (v, s, c, f, st) in enumerate(rows)])


def _table():
    from replicate.papers.hypernet_mip.analysis import seed_table

    rows = [  # default reaches loss 1.0 at step 40, 30, never (censored 50); MIP at 10, 20, 10
        ("default", 0, [2, 2, 2, 1.0, 0.9], 0.9, "finished"),
        ("default", 1, [2, 2, 1.0, 0.8, 0.8], 0.8, "finished"),
        ("default", 2, [2, 2, 2, 2, 2], 2.0, "finished"),
        ("mip", 0, [1.0, 0.5, 0.5, 0.5, 0.4], 0.4, "finished"),
        ("mip", 1, [2, 1.0, 0.6, 0.6, 0.6], 0.6, "finished"),
        ("mip", 2, [0.9, 0.9, 0.9, 0.9, 0.9], 0.9, "finished"),
    ]
    return seed_table(_runs_frame(rows), {"noise": 1.0}, 50)


def test_seed_table_censors_runs_that_never_reach_the_threshold():
    t = _table()
    assert t.steps_censored.tolist() == [40, 30, 50, 10, 20, 10]
    assert t.reached.tolist() == [True, True, False, True, True, True]
    from replicate.papers.hypernet_mip.analysis import reached_fraction

    assert reached_fraction(t, "noise", "default") == pytest.approx(2 / 3)
    assert reached_fraction(t, "noise", "mip") == 1.0


def test_steps_ratio_is_the_geometric_mean_of_per_seed_ratios_with_a_t_interval_on_logs():
    from scipy import stats

    from replicate.papers.hypernet_mip.analysis import steps_ratio

    est = steps_ratio(_table(), "noise")
    logs = np.log([40 / 10, 30 / 20, 50 / 10])  # default ÷ MIP per seed (seed 2 censored at 50)
    half = stats.t.ppf(0.975, 2) * logs.std(ddof=1) / math.sqrt(3)
    assert est.value == pytest.approx(30 ** (1 / 3)) and est.n == 3
    assert est.interval == pytest.approx((math.exp(logs.mean() - half), math.exp(logs.mean() + half)))
    assert est.units == pytest.approx((4.0, 1.5, 5.0))
    assert math.isnan(steps_ratio(_table(), "noise", "encoding").value)  # no encoding run: nothing paired


def test_final_gain_is_the_mean_paired_difference_with_a_t_interval():
    from scipy import stats

    from replicate.papers.hypernet_mip.analysis import final_gain

    est = final_gain(_table(), "noise")
    diffs = [0.5, 0.2, 1.1]  # default - MIP per seed
    mean, sd = sum(diffs) / 3, float(np.std(diffs, ddof=1))
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert est.value == pytest.approx(mean)
    assert est.interval == pytest.approx((mean - half, mean + half))
    assert est.units == pytest.approx(tuple(diffs))


def test_final_gain_of_a_diverged_run_is_not_judged_as_finite():
    from replicate import claims
    from replicate.papers.hypernet_mip.analysis import final_gain, seed_table

    rows = [("default", 0, [2.0], float("nan"), "diverged"), ("mip", 0, [1.0], 1.0, "finished"),
            ("default", 1, [2.0], 2.0, "finished"), ("mip", 1, [1.0], 1.0, "finished")]
    t = seed_table(_runs_frame(rows), 1.0, 10)
    assert t.steps_censored.tolist() == [10, 10, 10, 10] and math.isinf(t.final[0])
    est = final_gain(t, "noise")
    assert est.interval is None
    assert claims.judge(est.value if math.isfinite(est.value) else None, None, "> 0")[0] == "inconclusive"


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
    assert dm.image_shape == (1, 28, 28) and next(iter(dm.train_dataloader()))[0].shape[:2] == (5, 128)
    missing = instantiate(C.run_config(C.compose("hypernet_mip/convergence", "cpu", "full",
                                                 [f"figure.run.data.path={tmp_path}"]), 0).run.data, _convert_="all")
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte"):
        missing.prepare_data()


def test_cell_outcomes_use_seed_means_and_a_tie_tolerance():
    import pandas as pd

    from replicate.papers.hypernet_mip.analysis import cell_outcomes, gain_over_seeds

    rows = []
    # cell a: default 1.0, MIP 0.9 on average (win); b: 0.50 vs 0.49 (tie at 0.02); c: MIP diverges
    for cell, d, mp in (("a", (1.0, 1.1, 0.9), (0.9, 1.0, 0.8)), ("b", (0.5,) * 3, (0.49,) * 3),
                        ("c", (0.7,) * 3, (float("inf"),) * 3)):
        for seed in range(3):
            rows += [{"arch": cell, "variant": "default", "seed": seed, "final": d[seed], "steps": 100.0 * (seed + 1)},
                     {"arch": cell, "variant": "mip", "seed": seed, "final": mp[seed],
                      "steps": float("nan") if cell == "c" else 50.0}]
    cells = cell_outcomes(pd.DataFrame(rows), tie=0.02, max_steps=600, keys=["arch"]).set_index("arch")
    assert cells.gain["a"] == pytest.approx(0.1) and cells.gain["b"] == pytest.approx(0.01)
    assert cells.mip_better.tolist() == [True, False, False] and cells.mip_worse.tolist() == [False, False, True]
    assert cells.steps_default["a"] == 200 and cells.steps_mip["c"] == 600 and cells.mip_first.tolist() == [1, 1, 0]
    est = gain_over_seeds(pd.DataFrame(rows), keys=["arch"])  # per seed mean over cells a, b (c: inf dropped)
    assert est.n == 3 and est.units == pytest.approx(((0.1 + 0.01) / 2,) * 3)


def test_expand_seeds_gives_one_row_per_run_and_seed(tmp_path):
    from replicate.papers.hypernet_mip.analysis import expand_seeds, seed_table

    cfg = C.compose("hypernet_mip/convergence", "cpu", "smoke", ["figure.run.trainer.max_steps=4",
                                                                 "figure.run.trainer.val_check_interval=2"])
    point = [i for i, p in enumerate(C.points(cfg)) if p["module.variant"] == "default"
             and p["module.setting"] == {"hyper": {"init": "scaled"}}][0]
    runs.ensure(C.run_config(cfg, point), tmp_path)
    import pandas as pd

    frame = pd.DataFrame([{"point": point, "variant": "default", "setting": {"hyper": {"init": "scaled"}},
                           "run_dir": str(runs.run_dir(tmp_path, C.run_config(cfg, point))),
                           **runs.read_metrics(runs.run_dir(tmp_path, C.run_config(cfg, point)))}])
    per_seed = expand_seeds(frame, cfg)
    assert per_seed.seed.tolist() == [0, 1] and set(per_seed.variant) == {"default_scaled"}
    assert [len(v) for v in per_seed.val] == [2, 2] and per_seed.val[0] != per_seed.val[1]
    t = seed_table(per_seed, 9.0, 4)
    assert t.reached.all() and t.regime.tolist() == ["noise", "noise"]


def test_a_resumed_run_continues_every_seed_exactly(tmp_path):
    import shutil

    from replicate import train

    over = ["figure.run.trainer.val_check_interval=2", "figure.run.trainer.log_every_n_steps=1"]
    whole, half = (C.run_config(C.compose("hypernet_mip/convergence", "cpu", "smoke",
                                          [f"figure.run.trainer.max_steps={n}", *over]), 2) for n in (4, 2))
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


SCALED = {"hyper": {"init": "scaled"}}
ONEBLOCK = {"hyper": {"init": "oneblock"}}
L2 = {"task": {"kind": "l2"}, "primary": {"hidden": [64]}}
CONVERGENCE = [  # steps to the threshold and final loss, seeds 0, 1, 2
    ("default", {}, [(40, 0.9), (80, 0.8), (20, 1.0)]),
    ("encoding", {}, [(20, 0.9), (40, 0.9), (20, 0.9)]),
    ("residual", {}, [(20, 0.9), (20, 0.9), (20, 0.9)]),
    ("mip", {}, [(10, 0.8), (20, 0.75), (10, 0.85)]),
    ("default", SCALED, [(30, 0.9), (60, 0.9), (20, 0.9)]),
    ("encoding", SCALED, [(10, 0.9), (30, 0.9), (10, 0.9)]),
    ("default", ONEBLOCK, [(80, 1.0), (80, 1.0), (40, 1.0)]),
    ("default", L2, [(30, 0.3), (30, 0.3), (30, 0.3)]),
    ("mip", L2, [(10, 0.3), (30, 0.3), (None, 0.5)]),
]


def _log_t(ratios):
    from scipy import stats

    logs = np.log(ratios)
    half = stats.t.ppf(0.975, len(logs) - 1) * logs.std(ddof=1) / math.sqrt(len(logs))
    return math.exp(logs.mean()), (math.exp(logs.mean() - half), math.exp(logs.mean() + half))


def test_convergence_measures_pair_seeds_by_config_values():
    cfg, keys = _figure("convergence")  # thresholds: noise 1.0, l2 0.35; budget 600 steps
    runs_table = _mip_runs(CONVERGENCE, {"noise": 1.0, "l2": 0.35})
    m = measures.convergence(runs_table, cfg)
    assert keys <= set(m)
    for key, ratios in (("default_over_mip_noise", (4, 4, 2)), ("default_scaled_over_mip_noise", (3, 3, 2)),
                        ("default_scaled_over_encoding_scaled_noise", (3, 2, 2)),
                        ("default_over_default_scaled_noise", (4 / 3, 4 / 3, 1)),
                        ("default_over_encoding_noise", (2, 2, 1)), ("default_over_residual_noise", (2, 4, 1)),
                        ("default_oneblock_over_default_noise", (2, 1, 2)),
                        ("default_over_mip_l2", (3, 1, 30 / 600))):
        est, (value, interval) = m[f"steps_ratio_{key}"], _log_t(ratios)
        assert est.units == pytest.approx(ratios) and est.value == pytest.approx(value), key
        assert est.interval == pytest.approx(interval) and est.interval[0] <= est.value <= est.interval[1], key
    gain = m["final_gain_noise"]
    assert gain.units == pytest.approx((0.1, 0.05, 0.15)) and gain.value == pytest.approx(0.1)
    assert m["mip_reached_frac_noise"] == 1.0 and m["mip_reached_frac_l2"] == pytest.approx(2 / 3)
    assert m["steps_mip_l2"] == pytest.approx((10 + 30 + 600) / 3) and m["runs_never_reaching_l2"] == 1
    shuffled = measures.convergence(runs_table.iloc[::-1].reset_index(drop=True), cfg)
    assert shuffled["steps_ratio_default_over_mip_noise"].units == m["steps_ratio_default_over_mip_noise"].units
    verdicts = {c.id: c.verdict for c in claims_lib.evaluate(OmegaConf.to_container(cfg.figure.claims), m)}
    assert verdicts["mip_faster_l2"] == "inconclusive"  # a MIP seed never reached the threshold
    # a smaller sweep (no residual run): every key still comes back, NaN where a variant did not run
    smaller = measures.convergence(_mip_runs([r for r in CONVERGENCE if r[0] != "residual"],
                                             {"noise": 1.0, "l2": 0.35}), cfg)
    assert keys <= set(smaller) and math.isnan(smaller["steps_ratio_default_over_residual_noise"].value)
    assert math.isnan(smaller["residual_reached_frac_noise"])


ABLATIONS = [  # one cell per setting: per seed (steps to loss 1.0 or None, final loss)
    ("default", {}, [(100, 1.0), (100, 1.3), (100, 0.9)]),
    ("mip", {}, [(50, 0.8), (50, 0.9), (50, 0.7)]),
    ("default", {"optim": {"name": "sgd", "lr": 1.0e-2}}, [(None, 2.0)] * 3),
    ("mip", {"optim": {"name": "sgd", "lr": 1.0e-2}}, [(None, 2.0)] * 3),
    ("default", {"hyper": {"norm": "layer"}}, [(20, 0.5)] * 3),
    ("mip", {"hyper": {"norm": "layer"}}, [(40, 0.6)] * 3),
]


def test_ablation_measures_judge_cells_on_seed_means():
    cfg, keys = _figure("ablations")  # threshold 1.0, tie 0.02
    m = measures.ablations(_mip_runs(ABLATIONS, 1.0), cfg)
    assert keys <= set(m)
    # base: gain 1.0667 - 0.8 (MIP better); SGD: 0 (tie); LayerNorm: -0.1 (MIP worse)
    better = m["frac_cells_mip_better"]
    assert better.value == pytest.approx(1 / 3) and better.n == 3 and "Wilson" in better.method
    assert better.interval == pytest.approx(claims_lib.proportion(1, 3, unit="cells").interval)
    assert (m["n_cells_mip_better"], m["n_cells_tie"], m["n_cells_mip_worse"]) == (1, 1, 1)
    # threshold reached in the base cell (MIP first) and the LayerNorm cell (MIP later); SGD never
    assert m["frac_cells_mip_first"].value == pytest.approx(0.5) and m["n_cells_reaching_threshold"] == 2
    gain = m["mean_gain_over_seeds"]  # per seed mean over cells of default - MIP
    assert gain.units == pytest.approx(((0.2 - 0.1) / 3, (0.4 - 0.1) / 3, (0.2 - 0.1) / 3))
    verdicts = {c.id: c.verdict for c in claims_lib.evaluate(OmegaConf.to_container(cfg.figure.claims), m)}
    assert verdicts["mip_reaches_threshold_first"] == "inconclusive"  # 2 cells reach it, 3 required


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
