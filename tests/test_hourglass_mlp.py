"""Hourglass MLP (Chen et al. 2025): parameter counts by hand, the fixed lift, training of both
block types, stacked-copies equivalence (one copy per learning rate = Adam alone at that rate),
PSNR and degradations, Pareto frontiers on hand cases, the data (scikit-image photo patches,
digits, the MNIST and ImageNet-32 fixtures) and the figure configs."""

import functools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from replicate import config as C
from replicate.config import ConfigError
from replicate.papers.hourglass_mlp.data import (PatchData, RestorationData, degrade, psnr, random_affine,
                                                 skimage_data_dir)
from replicate.papers.hourglass_mlp.model import (ConventionalMLP, HourglassMLP, Shape, build,
                                                  count_parameters, module_parameters)
from replicate.papers.hourglass_mlp.module import HourglassGrid, grid_shapes, init_seed, warmup_cosine
from replicate.papers.hourglass_mlp.pareto import (best_per_budget, compare_frontiers, frontier_value,
                                                   matched_budgets, pareto_mask, select_learning_rate,
                                                   trend)
from replicate.papers.hourglass_mlp.stacked import StackedAdam, StackedNet

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
FIXTURES = Path(__file__).parent / "fixtures"
MNIST_FIXTURE = FIXTURES / "mnist_tiny"
IMAGENET32_FIXTURE = FIXTURES / "hourglass_imagenet32_tiny"
TASK = {"kind": "denoise", "sigma": 0.3, "factor": 2}
LRS = {"hourglass": [1e-2, 3e-2], "conventional": [1e-2, 3e-2], "conventional_head": [1e-2, 3e-2]}
PHOTOS = {"train": ["camera.png", "coins.png"], "val": ["moon.png"], "test": ["brick.png"]}


def tiny_grid(**kw):
    grid = {"hourglass": {"d_z": [12], "d_h": [4], "depth": [1, 2]}, "conventional": {"d_h": [24], "depth": [1]},
            "conventional_head": {"d_h": [24], "depth": [1]}}
    return HourglassGrid(grid=kw.pop("grid", grid), task=kw.pop("task", TASK), lrs=kw.pop("lrs", LRS),
                         image_shape=kw.pop("image_shape", (1, 4, 4)), max_steps=20, **kw)


def train_steps(module, batch, steps):
    opt = module.configure_optimizers()["optimizer"]  # no scheduler step: multiplier 1
    for _ in range(steps):
        opt.zero_grad()
        module.training_step((batch,), 0).backward()
        opt.step()


# --------------------------------------------------------------------------- parameter counts


def test_parameter_counts_match_a_hand_count():
    # Hourglass d_x=4, d_z=6, d_h=2, L=1, d_out=4: LayerNorm 2*6 + W1 6*2+2 + W2 2*6+6 = 44; head 6*4+4 = 28
    assert count_parameters(Shape("hourglass", d_h=2, depth=1, d_z=6), 4, 4) == {"trainable": 72, "fixed": 24}
    assert count_parameters(Shape("hourglass", d_h=2, depth=1, d_z=6, train_lift=True), 4, 4) == {"trainable": 96, "fixed": 0}
    # conventional d_x=4, d_h=8, L=2: per block 2*4 + (4*8+8) + (8*4+4) = 84; the head adds 4*4+4 = 20
    assert count_parameters(Shape("conventional", d_h=8, depth=2), 4, 4) == {"trainable": 168, "fixed": 0}
    assert count_parameters(Shape("conventional_head", d_h=8, depth=2), 4, 4) == {"trainable": 188, "fixed": 0}


@pytest.mark.parametrize("shape", [Shape("hourglass", 16, 3, d_z=40), Shape("hourglass", 8, 2, 24, True),
                                   Shape("conventional", 30, 2), Shape("conventional_head", 30, 3)])
def test_formula_counts_equal_the_built_modules(shape):
    assert count_parameters(shape, 16, 16) == module_parameters(build(shape, 16, 16))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="family"):
        Shape("mlp", 8, 1)
    with pytest.raises(ValueError, match="d_z"):
        Shape("hourglass", 8, 1)
    with pytest.raises(ValueError, match="hourglass family only"):
        grid_shapes({"conventional": {"d_h": [8], "depth": [1], "d_z": [4]}})


def test_grid_keeps_only_wide_narrow_wide_hourglass_shapes():
    shapes = grid_shapes({"hourglass": {"d_z": [8, 16], "d_h": [8, 4], "depth": [1]}})
    assert sorted((s.d_z, s.d_h) for s in shapes) == [(8, 4), (16, 4), (16, 8)]


def test_an_explicit_design_lists_its_shapes_times_the_lift_choices():
    shapes = grid_shapes({"hourglass": {"shapes": [[16, 4, 1], [32, 8, 2]], "train_lift": [False, True]},
                          "conventional": {"shapes": [[24, 3]]}})
    assert [(s.d_z, s.d_h, s.depth, s.train_lift) for s in shapes[:4]] == [
        (16, 4, 1, False), (16, 4, 1, True), (32, 8, 2, False), (32, 8, 2, True)]
    assert (shapes[4].family, shapes[4].d_h, shapes[4].depth) == ("conventional", 24, 3)
    with pytest.raises(ValueError, match="should be"):
        grid_shapes({"hourglass": {"shapes": [[16, 4]]}})
    with pytest.raises(ValueError, match="cannot be combined"):
        grid_shapes({"hourglass": {"shapes": [[16, 4, 1]], "d_z": [8]}})


# --------------------------------------------------------------------------- the fixed lift


def hourglass_nets(module):
    return [n for n, s in zip(module.nets, module.shapes) if s.family == "hourglass"]


def test_fixed_lift_gets_no_gradient_and_is_unchanged_by_training():
    module = tiny_grid()
    nets = hourglass_nets(module)
    before = [n.lift.clone() for n in nets]
    train_steps(module, torch.rand(16, 1, 4, 4, generator=torch.Generator().manual_seed(0)), 5)
    for n, w in zip(nets, before):
        assert "lift" not in dict(n.named_parameters()) and torch.equal(n.lift, w)
        assert n.flat.grad is not None  # the rest trained


def test_trained_lift_starts_from_the_same_weights_and_moves():
    grid = {"hourglass": {"d_z": [12], "d_h": [4], "depth": [1], "train_lift": [False, True]}}
    module = tiny_grid(grid=grid)
    fixed, trained = module.nets
    assert torch.equal(fixed.lift, trained.view("lift")[0]) and torch.equal(fixed.view("head_w"), trained.view("head_w"))
    start = trained.view("lift").clone()
    train_steps(module, torch.rand(16, 1, 4, 4, generator=torch.Generator().manual_seed(1)), 3)
    assert not torch.equal(trained.view("lift"), start)


def test_lift_init_has_variance_one_over_input_width():
    torch.manual_seed(0)
    w = HourglassMLP(64, 64, 2048, 8, 1).lift.weight
    assert w.var().item() == pytest.approx(1 / 64, rel=0.05)


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("make", [lambda: HourglassMLP(16, 16, 48, 8, 2), lambda: ConventionalMLP(16, 16, 48, 2, head=False),
                                  lambda: ConventionalMLP(16, 16, 48, 2, head=True)], ids=["hourglass", "plain", "head"])
def test_both_block_types_reduce_the_loss_on_a_tiny_batch(make):
    torch.manual_seed(0)
    net = make()
    x = torch.rand(32, 16, generator=torch.Generator().manual_seed(2))
    target = x.flip(1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = F.mse_loss(net(x), target).item()
    for _ in range(100):
        opt.zero_grad()
        loss = F.mse_loss(net(x), target)
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first


@pytest.mark.parametrize("shape", [Shape("hourglass", 4, 2, 12), Shape("hourglass", 4, 1, 12, True),
                                   Shape("conventional", 24, 2), Shape("conventional_head", 24, 1)])
def test_a_stacked_copy_computes_what_its_reference_module_does(shape):
    torch.manual_seed(0)
    reference = build(shape, 16, 16)
    net = StackedNet(shape, 16, 16, copies=3, reference=reference)
    x = torch.rand(5, 16, generator=torch.Generator().manual_seed(6))
    out = net(x)
    assert out.shape == (3, 5, 16)
    for k in range(3):
        torch.testing.assert_close(out[k], reference(x), rtol=0, atol=1e-6)
    assert module_parameters(net.copy_module(1)) == count_parameters(shape, 16, 16)


def test_grid_training_equals_training_each_shape_alone_with_adam_at_each_rate():
    """Summed losses of independent copies + per-copy Adam = each shape alone with torch's Adam."""
    grid = {"hourglass": {"d_z": [12], "d_h": [4], "depth": [2], "train_lift": [True]},
            "conventional_head": {"d_h": [24], "depth": [1]}}
    lrs = {"hourglass": [3e-3, 3e-2], "conventional_head": [1e-2, 5e-2]}
    batch = torch.rand(16, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    together = tiny_grid(grid=grid, lrs=lrs)
    inputs, target = together.pairs(batch, torch.Generator().manual_seed(9))
    alone = []
    for shape in together.shapes:
        for lr in lrs[shape.family]:
            torch.manual_seed(init_seed(0, shape))
            model = build(shape, 16, 16)
            alone.append((model, torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)))
    opt = together.configure_optimizers()["optimizer"]
    for _ in range(4):
        opt.zero_grad()
        total = sum((net(inputs) - target).pow(2).mean(dim=(1, 2)).sum() for net in together.nets)
        total.backward()
        opt.step()
        for model, o in alone:
            o.zero_grad()
            F.mse_loss(model(inputs), target).backward()
            o.step()
    copies = [net.copy_module(k) for net in together.nets for k in range(net.copies)]
    for mine, (model, _) in zip(copies, alone):
        for a, b in zip(mine.parameters(), model.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=2e-6)


def test_stacked_adam_state_round_trips_through_a_checkpoint():
    net = StackedNet(Shape("conventional_head", 8, 1), 4, 4, copies=2)
    opt = StackedAdam([{"params": [net.flat], "row_lr": [1e-3, 1e-2]}])
    net(torch.rand(3, 4)).sum().backward()
    opt.step()
    again = StackedAdam([{"params": [net.flat], "row_lr": [1e-3, 1e-2]}])
    again.load_state_dict(opt.state_dict())
    assert torch.equal(again.state[net.flat]["exp_avg"], opt.state[net.flat]["exp_avg"])
    assert again.param_groups[0]["row_lr"].tolist() == pytest.approx([1e-3, 1e-2])


def test_a_diverged_copy_is_dropped_and_the_others_train():
    module = tiny_grid()
    with torch.no_grad():
        module.nets[0].flat[1].fill_(float("nan"))  # copy 1 (the second rate) of the first shape
    batch = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    loss = module.training_step((batch,), 0)
    assert torch.isfinite(loss) and module.nets[0].alive.tolist() == [True, False]
    assert all(n.alive.all() for n in module.nets[1:])
    rows = module.probe_metrics(FakeData((1, 4, 4)))["shapes"]
    assert [r["diverged"] for r in rows[:2]] == [False, True] and math.isnan(rows[1]["test_psnr"])
    assert [r["lr"] for r in rows[:2]] == LRS["hourglass"]


class FakeData:
    def __init__(self, shape):
        self.x = torch.rand(12, *shape, generator=torch.Generator().manual_seed(8))

    def held_out(self, split):
        return self.x[:6] if split == "val" else self.x[6:]

    def train_sample(self, n):
        return self.x[:n]


def test_warmup_then_cosine_schedule():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0)


# --------------------------------------------------------------------------- PSNR, degradations


def test_psnr_on_known_images():
    target = torch.full((2, 1, 4, 4), 0.5)
    assert psnr(target + 0.1, target).tolist() == pytest.approx([20.0, 20.0])  # MSE 0.01
    assert psnr(target + 0.01, target)[0].item() == pytest.approx(40.0)
    clamped = torch.zeros(1, 1, 4, 4).fill_(-3.0)  # clamped to 0 before the error
    assert psnr(clamped, torch.full((1, 1, 4, 4), 0.1))[0].item() == pytest.approx(20.0)
    assert math.isinf(psnr(target, target)[0].item())


def test_superres_input_is_the_pooled_image_repeated():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    low = degrade(x, "superres", torch.Generator(), sigma=0.0, factor=2)
    assert low[0, 0].tolist() == [[2.5, 2.5, 4.5, 4.5], [2.5, 2.5, 4.5, 4.5],
                                  [10.5, 10.5, 12.5, 12.5], [10.5, 10.5, 12.5, 12.5]]
    with pytest.raises(ValueError, match="factor 3"):
        degrade(x, "superres", torch.Generator(), sigma=0.0, factor=3)


def test_denoise_noise_has_the_configured_std_and_is_seeded():
    x = torch.zeros(64, 1, 8, 8)
    a = degrade(x, "denoise", torch.Generator().manual_seed(5), sigma=0.5, factor=2)
    b = degrade(x, "denoise", torch.Generator().manual_seed(5), sigma=0.5, factor=2)
    assert torch.equal(a, b) and a.std().item() == pytest.approx(0.5, rel=0.05)


def test_random_affine_is_identity_when_off_and_keeps_mass_when_small():
    x = torch.zeros(4, 1, 8, 8)
    x[:, :, 2:6, 2:6] = 1.0
    assert torch.equal(random_affine(x, torch.Generator(), 0, 0, 0), x)
    warped = random_affine(x, torch.Generator().manual_seed(0), rotate_deg=10, scale=0.05, shift_px=1)
    assert not torch.equal(warped, x)
    assert warped.sum((1, 2, 3)).tolist() == pytest.approx(x.sum((1, 2, 3)).tolist(), rel=0.15)


# --------------------------------------------------------------------------- Pareto


def test_pareto_mask_on_a_hand_case():
    params = [10, 20, 15, 30, 25, 40]
    scores = [1.0, 3.0, 0.5, 2.5, 3.0, float("nan")]
    # (15, .5) loses to (10, 1); (25, 3) and (30, 2.5) lose to (20, 3); NaN never counts
    assert pareto_mask(params, scores).tolist() == [True, True, False, False, False, False]
    assert np.array_equal(frontier_value(params, scores, [5, 10, 19, 20, 100]), [np.nan, 1, 1, 3, 3], equal_nan=True)


def test_frontier_comparison_on_a_hand_case():
    a = pd.DataFrame({"trainable": [10, 30], "test_psnr": [2.0, 4.0]})
    b = pd.DataFrame({"trainable": [20, 40], "test_psnr": [3.0, 5.0]})
    assert matched_budgets(a.trainable, b.trainable).tolist() == [20, 30]
    c = compare_frontiers(a, b)  # at 20: 2 vs 3; at 30: 4 vs 3
    assert (c["win_fraction"], c["mean_gap"], c["min_gap"], c["n_budgets"]) == (0.5, 0.0, -1.0, 2)
    assert compare_frontiers(b, a)["win_fraction"] == 0.5


def test_learning_rate_is_selected_on_validation_not_test():
    rows = [dict(family="conventional", d_z=0, d_h=8, depth=1, train_lift=False, trainable=100, fixed=0,
                 diverged=False, lr=lr, seed=s, val_psnr=val, test_psnr=test, train_psnr=test)
            for lr, val, test in [(1e-3, 10.0, 12.0), (1e-2, 11.0, 9.0)] for s in (0, 1)]
    best = select_learning_rate(pd.DataFrame(rows))
    assert best.lr.tolist() == [1e-2] and best.test_psnr.tolist() == [9.0] and best.seeds.tolist() == [2]


def test_best_per_budget_and_trend():
    table = pd.DataFrame({"trainable": [10, 20, 40], "test_psnr": [1.0, 2.0, 3.0], "depth": [1, 2, 4]})
    picks = best_per_budget(table, [5, 10, 25, 40])
    assert picks.budget.tolist() == [10, 25, 40] and picks.depth.tolist() == [1, 2, 4]
    assert trend(picks.budget, picks.depth) == pytest.approx(1.0)
    assert trend([1, 2, 3], [4, 4, 4]) == 0.0


# --------------------------------------------------------------------------- data and configs


def test_digits_split_into_train_validation_and_test():
    dm = RestorationData(source="digits", batch_size=64, val_fraction=0.3)
    val, test = dm.held_out("val"), dm.held_out("test")
    assert (len(dm.data.train_y), len(val), len(test)) == (1258, 270, 269)
    assert not any(torch.equal(v, t) for v in val[:20] for t in test[:20])
    assert dm.provenance["n_test"] == 269
    small = PatchData(source="digits", val_fraction=0.3)  # the same split through the patch datamodule
    assert torch.equal(small.held_out("test"), test) and small.image_shape == (1, 8, 8)


def test_skimage_patches_come_from_disjoint_photos_of_the_installed_wheel():
    dm = PatchData(photos=PHOTOS, n_val=64, n_test=32, batch_size=8, max_steps=4, seed=0)
    val, test = dm.held_out("val"), dm.held_out("test")
    assert val.shape == (64, 1, 16, 16) and test.shape == (32, 1, 16, 16) and dm.image_shape == (1, 16, 16)
    assert 0.0 <= float(val.min()) and float(val.max()) <= 1.0
    meta = dm.provenance
    assert (meta["package"], meta["source"], meta["photos"]) == ("scikit-image", "skimage", PHOTOS)
    assert meta["version"] == __import__("importlib.metadata").metadata.version("scikit-image")
    assert sorted(meta["sha256"]) == sorted(sum(PHOTOS.values(), [])) and (skimage_data_dir() / "moon.png").is_file()
    # held-out patches are a fixed draw; training patches are the seed's stream, resumable at any offset
    other = PatchData(photos=PHOTOS, n_val=64, n_test=32, batch_size=8, max_steps=4, seed=1)
    assert torch.equal(other.held_out("val"), val)
    a, b = dm.train_dataset(offset=0), other.train_dataset(offset=0)
    assert not torch.equal(a[0][0], b[0][0])
    assert torch.equal(dm.train_dataset(offset=5)[0][0], a[5][0])
    # a moon patch is never a camera/coins patch: the validation photo is not in training
    train = torch.stack([a[i][0] for i in range(32)])
    assert not any(torch.equal(v, t) for v in val[:16] for t in train)


def test_photo_splits_must_be_disjoint_and_present():
    with pytest.raises(ValueError, match="more than one split"):
        PatchData(photos={"train": ["moon.png"], "val": ["moon.png"], "test": ["brick.png"]})
    with pytest.raises(ConfigError, match="not_a_photo.png"):
        PatchData(photos={"train": ["not_a_photo.png"], "val": ["moon.png"], "test": ["brick.png"]}).setup()


def test_mnist_fixture_loads_through_the_real_loader():
    dm = PatchData(source="mnist", path=str(MNIST_FIXTURE), batch_size=4)
    assert dm.image_shape == (1, 28, 28)
    assert (len(dm.held_out("val")), len(dm.held_out("test"))) == (5, 5)
    module = tiny_grid(image_shape=(1, 28, 28), grid={"hourglass": {"d_z": [1024], "d_h": [8], "depth": [1]}})
    probes = module.probe_metrics(dm)
    assert probes["shapes"][0]["fixed"] == 784 * 1024 and math.isfinite(probes["shapes"][0]["test_psnr"])
    with pytest.raises(ConfigError, match="t10k-images-idx3-ubyte"):
        PatchData(source="mnist", path=str(FIXTURES / "no_such_folder")).setup()


def test_imagenet32_fixture_loads_and_missing_files_are_named():
    dm = PatchData(source="imagenet32", path=str(IMAGENET32_FIXTURE), batch_size=2, max_steps=2)
    assert dm.image_shape == (3, 32, 32) and (len(dm.held_out("val")), len(dm.held_out("test"))) == (2, 2)
    sample = dm.train_dataset(offset=0)[0][0]
    assert sample.dtype == torch.float32 and sample.shape == (3, 32, 32) and float(sample.max()) <= 1.0
    assert dm.provenance["files"] == ["train_data_batch_1.npz", "val_data.npz"]
    with pytest.raises(ConfigError, match="val_data.npz") as err:
        PatchData(source="imagenet32", path=str(FIXTURES / "no_such_folder")).setup()
    assert "\n" not in str(err.value)


def test_default_figures_use_an_8x8_ladder_with_one_symmetric_rate_grid_and_ten_checks():
    for figure in ("pareto_denoise", "pareto_superres", "shape_trends"):
        cfg = C.compose(f"hourglass_mlp/{figure}", "cpu", "default")
        run = cfg.figure.run
        assert run.data.source == "skimage" and run.data.patch == 8 and list(run.module.image_shape) == [1, 8, 8]
        assert run.module.residual is True
        grids = {tuple(v) for v in OmegaConf.to_container(run.module.lrs).values()}
        assert len(grids) == 1 and len(next(iter(grids))) >= 7  # one grid for every family, >= 7 rates
        rates = sorted(next(iter(grids)))
        assert all(b / a == pytest.approx(2.0) for a, b in zip(rates, rates[1:]))
        held = len(run.data.photos.val) + len(run.data.photos.test)
        assert held >= 10 and not set(run.data.photos.val) & set(run.data.photos.test)
        assert run.trainer.max_steps // run.trainer.val_check_interval >= 10  # >= 10 points per training curve
        budgets = list(cfg.figure.measure.budgets)
        shapes = [s for s in grid_shapes(OmegaConf.to_container(run.module.grid)) if not s.train_lift]
        counts = [count_parameters(s, 64, 64)["trainable"] for s in shapes]
        assert not np.isnan(A.ladder_budget(counts, budgets)).any()  # every shape within +-10 % of a budget
        per = {}
        for shape, budget in zip(shapes, A.ladder_budget(counts, budgets)):
            per.setdefault((shape.family, budget), []).append(shape)
        allocations = 4 if figure != "pareto_superres" else 2
        assert {len(v) for v in per.values()} == {allocations} and len(per) == 2 * len(budgets) >= 10
        assert len(C.run_configs(cfg)) >= 2  # seeds


@pytest.mark.parametrize("scale", ["smoke", "default", "full"])
def test_denoise_figures_share_their_runs(scale):
    hashes = {f: [C.run_hash(r) for r in C.run_configs(C.compose(f"hourglass_mlp/{f}", "cpu", scale))]
              for f in ("pareto_denoise", "shape_trends", "pareto_superres")}
    assert hashes["pareto_denoise"] == hashes["shape_trends"]
    assert not set(hashes["pareto_denoise"]) & set(hashes["pareto_superres"])


# --------------------------------------------------------------------------- baselines, PSNR conventions
def test_gaussian_blur_keeps_constants_and_mass_and_is_the_identity_at_zero():
    from replicate.papers.hourglass_mlp.data import gaussian_blur
    flat = torch.full((2, 1, 8, 8), 0.3)
    assert torch.allclose(gaussian_blur(flat, 1.5), flat, atol=1e-6)
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(gaussian_blur(x, 0.0), x)
    # an impulse in the middle spreads symmetrically and the 1-D kernel sums to 1
    impulse = torch.zeros(1, 1, 9, 9)
    impulse[0, 0, 4, 4] = 1.0
    out = gaussian_blur(impulse, 1.0)[0, 0]
    assert torch.allclose(out, out.flip(0)) and torch.allclose(out, out.t())
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5) and out[4, 4] < 1 and out[4, 4] == out.max()
    # centre / one step along an axis = exp(1 / (2 sigma^2)) for a Gaussian of sigma 1
    assert float(out[4, 4] / out[4, 5]) == pytest.approx(math.exp(0.5), rel=1e-5)


def test_bicubic_baseline_is_exact_on_constants_and_uses_only_the_pooled_image():
    from replicate.papers.hourglass_mlp.data import bicubic_upsample
    flat = torch.full((1, 1, 8, 8), 0.7)
    assert torch.allclose(bicubic_upsample(flat, 2), flat, atol=1e-6)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = x.clone()
    y[..., 0::2, 0::2], y[..., 1::2, 1::2] = x[..., 1::2, 1::2], x[..., 0::2, 0::2]  # same 2x2 means
    assert torch.allclose(bicubic_upsample(x, 2), bicubic_upsample(y, 2))


def test_the_two_psnr_conventions_per_photo_on_a_hand_case():
    from replicate.papers.hourglass_mlp.data import MSE_FLOOR, group_psnr, to_psnr
    mse = torch.tensor([1e-2, 1e-4, 1e-3, 1e-3])  # photo 0: 20 dB and 40 dB patches; photo 1: two 30 dB patches
    mean_psnr, mse_psnr = group_psnr(mse, torch.tensor([0, 0, 1, 1]), 2)
    assert mean_psnr == pytest.approx([30.0, 30.0])
    assert mse_psnr == pytest.approx([10 * math.log10(1 / 0.00505), 30.0])  # Jensen: the mean MSE is 5.05e-3
    assert float(to_psnr(torch.tensor(0.0))) == pytest.approx(10 * math.log10(1 / MSE_FLOOR))  # exact: capped


def test_residual_outputs_start_from_the_input_plus_the_head_and_match_the_stacked_copies():
    torch.manual_seed(0)
    for shape in (Shape("hourglass", 4, 2, d_z=12), Shape("conventional_head", 8, 2)):
        ref = build(shape, 6, 6, residual=True)
        with torch.no_grad():
            ref.head.weight.zero_()
            ref.head.bias.zero_()
        x = torch.randn(5, 6)
        assert torch.allclose(ref(x), x)  # a zero head: the identity map
        net = StackedNet(shape, 6, 6, 2, reference=ref, residual=True)
        assert torch.allclose(net(x)[1], x) and torch.allclose(net.copy_module(0)(x), x)
    plain = build(Shape("conventional", 8, 1), 6, 6, residual=True)
    assert not plain.residual  # its last residual stream already is x + a branch
    with pytest.raises(ValueError, match="d_out = d_x"):
        build(Shape("hourglass", 4, 1, d_z=12), 6, 3, residual=True)


def photo_data(n=12):
    return PatchData(source="skimage", photos={"train": ["camera.png"], "val": ["moon.png", "coins.png"],
                                               "test": ["brick.png", "coffee.png", "text.png"]},
                     patch=8, n_val=n, n_test=n, batch_size=4, max_steps=2)


def test_held_out_patches_are_balanced_over_photos_and_named():
    dm = photo_data()
    assert dm.held_out_photos("test").tolist() == [0, 1, 2] * 4 and dm.held_out_photos("val").tolist() == [0, 1] * 6
    assert dm.photo_names_of("test") == ["brick.png", "coffee.png", "text.png"]


def test_probes_give_per_photo_psnr_in_both_conventions_and_the_baselines():
    dm = photo_data()
    module = tiny_grid(image_shape=(1, 8, 8), residual=True, classical={"sigmas": [0.5, 1.0]})
    probes = module.probe_metrics(dm)
    row = probes["shapes"][0]
    assert len(row["test_photo_psnr"]) == 3 and len(row["val_photo_mse_psnr"]) == 2
    assert row["test_psnr"] == pytest.approx(np.mean(row["test_photo_psnr"]), abs=1e-3)  # equal patches per photo
    assert probes["photos"]["test"] == ["brick.png", "coffee.png", "text.png"]
    # the identity baseline is the degraded input scored by hand, with the split's fixed noise
    from replicate.papers.hourglass_mlp.module import EVAL_STREAMS, stream_generator
    clean = dm.held_out("test")
    noisy, target = module.pairs(clean, stream_generator(EVAL_STREAMS["test"], 0, "test"))
    by_hand = 10 * torch.log10(1 / (noisy.clamp(0, 1) - target).pow(2).mean(1).double())
    assert probes["baselines"]["identity"]["test"]["psnr"] == pytest.approx(float(by_hand.mean()), abs=1e-6)
    # the blur is picked on validation among the configured widths
    candidates = probes["baselines"]["classical_candidates"]
    assert set(candidates) == {"gaussian_blur_sigma=0.5", "gaussian_blur_sigma=1"}
    assert probes["baselines"]["classical"]["name"] == max(candidates, key=lambda k: candidates[k]["val_psnr"])


def test_each_validation_check_adds_a_curve_point_that_rides_in_the_checkpoint():
    dm = photo_data()
    module = tiny_grid(image_shape=(1, 8, 8), residual=True)
    point = module._curve_point(dm)
    assert len(point["val_psnr"]) == len(module.nets) and len(point["test_mse_psnr"][0]) == module.nets[0].copies
    module.curve = [point, {**point, "step": 5}]
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    fresh = tiny_grid(image_shape=(1, 8, 8), residual=True)
    fresh.on_load_checkpoint(checkpoint)
    rows = fresh.probe_metrics(dm)["shapes"]
    assert [p["step"] for p in fresh.curve] == [0, 5] and len(rows[0]["curve_test_psnr"]) == 2


# --------------------------------------------------------------------------- analysis (claims' numbers)
from replicate.papers.hourglass_mlp import analysis as A  # noqa: E402


def shape_rows(family, specs, seed=0, lr=1e-2, **extra):
    """Rows of ``shape_table``'s form: specs = [(trainable, val, test, depth, d_h)]."""
    return [dict(family=family, d_z=extra.get("d_z", 0), d_h=d_h, depth=depth, train_lift=False,
                 trainable=p, fixed=0, diverged=False, lr=lr, seed=seed, val_psnr=val, test_psnr=test,
                 train_psnr=test) for p, val, test, depth, d_h in specs]


def test_per_shape_selects_the_rate_on_validation_and_drops_a_rate_a_seed_diverged_at():
    rows = []
    for s in (0, 1):  # lr 1e-3: best validation but seed 1 diverged there; 1e-2 next best on validation
        rows += shape_rows("conventional", [(100, 12.0 if s == 0 else float("nan"), 13.0, 1, 8)], seed=s, lr=1e-3)
        rows += shape_rows("conventional", [(100, 11.0, 9.0, 1, 8)], seed=s, lr=1e-2)
        rows += shape_rows("conventional", [(100, 10.0, 15.0, 1, 8)], seed=s, lr=3e-2)  # best test: never picked
    best = A.per_shape(pd.DataFrame(rows))
    assert best.lr.tolist() == [1e-2] and best.test_psnr.tolist() == [9.0] and best.key.tolist() == ["conventional"]


def test_frontier_is_picked_on_validation_where_test_selection_would_pick_another_shape():
    # A: (10, val 1, test 1), (20, val 3, test 2), (30, val 2, test 5): the 30-parameter shape has the best
    # test PSNR but loses on validation to the 20-parameter one, so the validation frontier is {10, 20}.
    a = pd.DataFrame(shape_rows("hourglass", [(10, 1.0, 1.0, 1, 4), (20, 3.0, 2.0, 2, 4), (30, 2.0, 5.0, 4, 4)]))
    b = pd.DataFrame(shape_rows("conventional_head", [(15, 2.0, 3.0, 1, 8), (30, 4.0, 4.0, 2, 8)]))
    assert A.val_frontier(a).trainable.tolist() == [10, 20]
    picks = A.frontier_picks(a, [5, 30])
    assert math.isnan(picks.test_psnr[0]) and picks.trainable[1] == 20 and picks.test_psnr[1] == 2.0
    # distinct frontier points in [15, 30]: 15, 20 (A steps), 30 (B steps); A - B = 1-3, 2-3, 2-4
    gap = A.frontier_gap(a, b)
    assert gap["budgets"].tolist() == [15, 20, 30] and gap["gaps"].tolist() == [-2.0, -1.0, -2.0]
    assert (gap["win_fraction"], gap["mean_gap"], gap["min_gap"], gap["n_points"]) == (0.0, -5 / 3, -2.0, 3)
    # the old test-set selection would have credited A with the 30-parameter shape's 5 dB: a win at 30
    assert compare_frontiers(a, b)["win_fraction"] == pytest.approx(1 / 3)


def test_shape_trend_counts_each_distinct_frontier_point_once():
    rows = pd.DataFrame(shape_rows("hourglass", [(10, 1.0, 1.0, 1, 64), (20, 2.0, 2.0, 2, 32),
                                                 (25, 1.5, 9.0, 1, 16),  # off the validation frontier
                                                 (40, 3.0, 3.0, 4, 16)]))
    assert A.shape_trend(rows, "depth") == pytest.approx(1.0)
    assert A.shape_trend(rows, "d_h") == pytest.approx(-1.0)
    assert A.shape_trend(rows.iloc[:2], "depth") != A.shape_trend(rows.iloc[:2], "depth")  # NaN below 3 points
    assert A.lr_edge_points(rows, [1e-3, 1e-2]) == 3 and A.lr_edge_points(rows, [1e-3, 1e-2, 1e-1]) == 0
    # per-family grids: the hourglass grid decides for hourglass rows
    assert A.lr_edge_points(rows, {"hourglass": [1e-3, 1e-2, 1e-1], "conventional": [1e-2]}) == 0
    assert A.at_lr_edge(rows, {"hourglass": [1e-2, 3e-2]}).all()


def test_each_seed_reruns_the_selection_on_its_own_runs():
    # one shape at two rates; validation prefers 1e-3 on seed 0 and 1e-2 on seed 1, so each seed
    # reports its own pick's test PSNR (1 and 6), while the pooled selection (mean validation) picks one rate
    rows = (shape_rows("hourglass", [(10, 2.0, 1.0, 1, 4)], seed=0, lr=1e-3)
            + shape_rows("hourglass", [(10, 1.0, 9.0, 1, 4)], seed=0, lr=1e-2)
            + shape_rows("hourglass", [(10, 1.0, 9.0, 1, 4)], seed=1, lr=1e-3)
            + shape_rows("hourglass", [(10, 4.0, 6.0, 1, 4)], seed=1, lr=1e-2))
    by_seed = A.shapes_by_seed(pd.DataFrame(rows))
    assert sorted(by_seed) == [0, 1]
    assert [float(by_seed[s].test_psnr.iloc[0]) for s in (0, 1)] == [1.0, 6.0]
    assert A.per_shape(pd.DataFrame(rows)).lr.tolist() == [1e-2]  # mean validation 2.5 vs 1.5


def test_the_digits_option_still_builds():
    from hydra.utils import instantiate
    cfg = OmegaConf.load(C.CONFIG_DIR / "training" / "hourglass_mlp" / "digits_restoration.yaml")
    run = OmegaConf.create({"figure": {"run": cfg}}).figure.run
    module, data = instantiate(run.module, _convert_="all"), instantiate(run.data, _convert_="all")
    sizes = {f: sum(s.family == f for s in module.shapes) for f in ("hourglass", "conventional", "conventional_head")}
    assert set(sizes.values()) == {9} and data.image_shape == (1, 8, 8) and len(data.held_out("test")) == 269



# --------------------------------------------------------------------------- analysis: photos, curves, ladder
def test_photo_gap_scores_validation_picks_on_every_photo():
    a = pd.DataFrame([dict(family="hourglass", d_z=8, d_h=2, depth=d, train_lift=False, trainable=p, val_psnr=v,
                           test_photo_psnr=t) for d, p, v, t in ((1, 10, 6.0, [6.0, 7.0]), (2, 20, 8.0, [8.0, 5.0]),
                                                                 (3, 40, 10.0, [10.0, 10.0]))])
    b = pd.DataFrame([dict(family="conventional", d_z=0, d_h=8, depth=d, train_lift=False, trainable=p, val_psnr=v,
                           test_photo_psnr=t) for d, p, v, t in ((1, 15, 5.0, [5.0, 5.0]), (2, 30, 7.0, [9.0, 7.0]))])
    budgets, gaps = A.photo_gap(a, b, "val_psnr", "test_photo_psnr")
    # points 15, 20, 30; picks (10 vs 15), (20 vs 15), (20 vs 30)
    assert budgets.tolist() == [15, 20, 30]
    assert gaps.tolist() == [[1.0, 2.0], [3.0, 0.0], [-1.0, -2.0]]


def test_convergence_compares_the_seed_mean_at_half_and_full_training_with_the_seed_sd():
    table = pd.DataFrame({"seed": [0, 1], "curve_val_psnr": [[0.0, 1.0, 2.0, 2.2], [0.0, 1.0, 2.0, 2.6]]})

    def statistic(t):  # each seed's value at the check being evaluated (curve_table puts it in val_psnr)
        return dict(zip(t.seed, t.val_psnr))

    result = A.convergence(table, [10, 20, 30, 40], statistic)
    # T/2 = step 20 (index 1): mean 1.0; T: mean 2.4; seed sd at T = sd(2.2, 2.6) = sqrt(0.08)
    assert A.half_index([10, 20, 30, 40]) == 1 and len(result["curve"]) == 8
    assert result["shift"] == pytest.approx(1.4) and result["seed_sd"] == pytest.approx(math.sqrt(0.08))
    assert result["shift_over_sd"] == pytest.approx(1.4 / math.sqrt(0.08))
    flat = table.assign(curve_val_psnr=[[0.0, 2.4, 2.0, 2.2], [0.0, 2.4, 2.0, 2.6]])
    assert A.convergence(flat, [10, 20, 30, 40], statistic)["shift_over_sd"] == pytest.approx(0.0)
    assert A.convergence(table.iloc[:1], [10, 20, 30, 40], statistic)["shift_over_sd"] == math.inf  # no seed sd


def test_ladder_winners_use_ranks_within_the_budget_and_the_permutation_null_is_exact():
    rows = []
    for k, budget in enumerate((100, 200, 300, 400, 500)):
        for depth, d_z, d_h in ((1, 10, 8), (1, 20, 4), (3, 10, 3), (3, 20, 1)):
            win = (depth == (1 if k < 2 else 3)) and d_z == 20
            rows.append(dict(family="hourglass", d_z=d_z * (k + 1), d_h=d_h * (k + 1), depth=depth, train_lift=False,
                             trainable=budget * (1.05 if d_h == 1 else 1.0), lr=1e-2, val_psnr=9.0 if win else 5.0))
    w = A.ladder_winners(pd.DataFrame(rows), [100, 200, 300, 400, 500], ("depth", "d_z", "d_h"))
    assert w.depth.tolist() == [1, 1, 3, 3, 3] and w.allocations.tolist() == [4] * 5
    assert w.d_z_rank.tolist() == pytest.approx([2.5 / 3] * 5)  # the wide d_z ties with its twin: average rank 3.5 of 4
    assert w.d_h_rank.tolist() == [2 / 3, 2 / 3, 0.0, 0.0, 0.0]  # d_h 4 of (8, 4, 3, 1); then 1, the narrowest
    # ranks (1.5, 1.5, 4, 4, 4) against 1..5: rho = 7.5 / sqrt(7.5 * 10) = sqrt(3) / 2
    assert A.spearman(w.budget, w.depth) == pytest.approx(math.sqrt(3) / 2)
    # the null: the two 1s first in 2! 3! of the 5! orderings reach it
    assert A.permutation_p(w.budget, w.depth) == pytest.approx(12 / 120)
    assert A.permutation_p([1, 2, 3], [1, 2, 3]) == pytest.approx(1 / 6) and A.spearman([1, 2, 3], [5, 5, 5]) == 0.0
    assert np.isnan(A.ladder_budget([150], [100, 200])).all() and A.ladder_budget([95], [100]).tolist() == [100]


# --------------------------------------------------------------------------- measures (one per figure)
from replicate import claims as claims_lib  # noqa: E402
from replicate.papers.hourglass_mlp import measures  # noqa: E402

GRID = [2e-3, 4e-3, 8e-3]  # the rate grid; the shapes below train at its middle rate
STEPS = [10, 20, 30, 40]


def prow(family, trainable, val, test_photos, val_photos, depth=1, d_z=0, d_h=8, train_lift=False, lr=GRID[1],
         half_shift=0.0):
    """One (shape, rate) row of the probes: the two conventions differ by 1 dB everywhere; the
    curves hold the final values at every check, ``half_shift`` dB added to the test curve at T/2."""
    test = float(np.mean(test_photos))
    curve_test = [test, test + half_shift, test, test]
    return dict(family=family, d_z=d_z, d_h=d_h, depth=depth, train_lift=train_lift, trainable=trainable,
                fixed=64 * d_z if family == "hourglass" and not train_lift else 0, lr=lr, diverged=False,
                train_psnr=val, val_psnr=val, val_mse_psnr=val - 1, test_psnr=test, test_mse_psnr=test - 1,
                val_photo_psnr=list(val_photos), val_photo_mse_psnr=[v - 1 for v in val_photos],
                test_photo_psnr=list(test_photos), test_photo_mse_psnr=[t - 1 for t in test_photos],
                curve_val_psnr=[val] * 4, curve_val_mse_psnr=[val - 1] * 4, curve_test_psnr=curve_test,
                curve_test_mse_psnr=[c - 1 for c in curve_test])


def photo_runs(rows_of_seed, task="denoise"):
    """A stand-in for ``ctx.runs()``: one row per seed, its ``probes`` in the module's format."""
    base = {"identity": {"val": {"psnr": 3.0, "mse_psnr": 2.0}, "test": {"psnr": 3.0, "mse_psnr": 2.0}},
            "classical": {"name": "gaussian_blur_sigma=1", "val": {"psnr": 4.0, "mse_psnr": 3.0},
                          "test": {"psnr": 4.0, "mse_psnr": 3.0}}}
    out = []
    for seed, rows in rows_of_seed.items():
        probes = {"shapes": rows, "lrs": {f: GRID for f in ("hourglass", "conventional")}, "task": {"kind": task},
                  "baselines": base, "curve_steps": STEPS,
                  "photos": {"val": ["v0.png", "v1.png"], "test": ["t0.png", "t1.png", "t2.png"]}}
        out.append({"seed": seed, "status": "finished", "probes": probes})
    return pd.DataFrame(out)


H, V = (0.0, 0.5, -3.0), (0.2, 0.4)  # the Hourglass's extra dB on each test / validation photo


def pareto_rows(offsets=(0.0, 0.2), half_shift=0.0):
    """Hourglass (10, 20, 40 params; validation 6, 8, 10), test photo p = validation + H[p] + the
    seed's offset, validation photo q = validation + V[q] + offset; conventional (15, 30;
    validation 5, 7) scores its validation PSNR on every photo. Distinct frontier points 15, 20,
    30, gaps 1, 3, 1 dB at the validation level (mean 5/3)."""
    out = {}
    for seed, d in enumerate(offsets):
        rows = [prow("hourglass", p, v, [v + h + d for h in H], [v + x + d for x in V], depth=k + 1, d_z=32,
                     half_shift=half_shift) for k, (p, v) in enumerate(((10, 6.0), (20, 8.0), (40, 10.0)))]
        rows += [prow("conventional", p, v, [v] * 3, [v] * 2, depth=k + 1) for k, (p, v) in enumerate(((15, 5.0), (30, 7.0)))]
        out[seed] = rows
    return out


@functools.lru_cache(maxsize=None)
def claim_keys(figure):
    """Every key a claim of ``figure`` reads (``measured`` and ``requires``) and the composed config."""
    cfg = C.compose(f"hourglass_mlp/{figure}", "cpu", "default")
    specs = OmegaConf.to_container(cfg.figure.claims)
    return cfg, {s["measured"] for s in specs} | {k for s in specs for k in (s.get("requires") or {})}


def t_interval(values):
    from scipy import stats
    x = np.asarray(values, float)
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return x.mean() - half, x.mean() + half


@pytest.mark.parametrize("figure", ["pareto_denoise", "pareto_superres"])
def test_pareto_measures_take_test_photos_as_units_in_both_conventions_and_both_roles(figure):
    cfg, keys = claim_keys(figure)
    task = "denoise" if figure == "pareto_denoise" else "superres"
    runs = photo_runs(pareto_rows(), task)
    m = measures.pareto_denoise(runs, cfg) if figure == "pareto_denoise" else measures.pareto_superres(runs, cfg)
    assert keys <= set(m)
    photos = [5 / 3 + h + 0.1 for h in H]  # mean over the seeds' offsets 0 and 0.2
    gap = m["mean_gap_db"]
    assert gap.units == pytest.approx(photos) and gap.n == 3 and gap.interval == pytest.approx(t_interval(photos))
    assert m["mean_gap_db_mse"].units == pytest.approx(photos)  # both conventions move by the same 1 dB
    assert m["mean_gap_db_seeds"].units == pytest.approx([5 / 3 + np.mean(H), 5 / 3 + np.mean(H) + 0.2])
    assert m["mean_gap_db_swapped"].units == pytest.approx([5 / 3 + v + 0.1 for v in V])
    assert m["split_signs_agree"] == 1.0 and m["frontier_points"] == 3
    win = m["win_share_photos"]  # 2 of 3 photos: a Wilson interval inside [0, 1]
    assert win.value == pytest.approx(2 / 3) and win.estimator["name"] == "wilson" and 0 <= win.interval[0] <= win.interval[1] <= 1
    assert m["gap_by_photo"] == pytest.approx(dict(zip(["t0.png", "t1.png", "t2.png"], photos)))
    # the frontier never changes along training: shift 0 against a seed sd of sd(0, 0.2)
    assert m["convergence_shift_over_seed_sd"] == pytest.approx(0.0) and m["convergence_seed_sd_db"] == pytest.approx(math.sqrt(0.02))
    assert m["validation_checks"] == 4
    # identity 3 dB: the lowest frontier point is the conventional 5 dB one; classical 4 dB: the
    # weaker family's best point is the conventional 7 dB one
    assert m["frontier_minus_identity_db"] == pytest.approx(2.0) and m["frontier_minus_classical_db"] == pytest.approx(3.0)
    assert m["frontier_minus_identity_db_mse"] == pytest.approx(2.0)
    assert m["lr_edge_frontier_points_hourglass"] == 0 and m["lr_edge_frontier_points_conventional"] == 0
    judged = {c.id: c.verdict for c in claims_lib.evaluate(OmegaConf.to_container(cfg.figure.claims), m)}
    assert judged["hourglass_dominates_plain"] == "undecided"  # Wilson [0.21, 0.94] for 2 of 3 photos
    assert judged["hourglass_gap_vs_plain_swapped"] == "replicated"  # t over (1.97, 2.17): [0.80, 3.34] dB


def test_pareto_claims_are_inconclusive_when_training_had_not_converged_or_a_baseline_wins():
    cfg, _ = claim_keys("pareto_denoise")
    specs = OmegaConf.to_container(cfg.figure.claims)
    moving = measures.pareto_denoise(photo_runs(pareto_rows(half_shift=-1.0)), cfg)
    assert moving["convergence_shift_over_seed_sd"] == pytest.approx(1.0 / math.sqrt(0.02))
    for claim in claims_lib.evaluate(specs, moving):
        assert claim.verdict == "inconclusive" and "convergence_shift_over_seed_sd" in claim.reason
    # the conventional family's smallest shape below the degraded input: every claim is inconclusive
    rows = pareto_rows()
    for seed in rows:
        rows[seed] = [dict(r, test_psnr=2.0, test_mse_psnr=1.0) if r["family"] == "conventional" and r["trainable"] == 15
                      else r for r in rows[seed]]
    weak = measures.pareto_denoise(photo_runs(rows), cfg)
    assert weak["frontier_minus_identity_db"] == pytest.approx(-1.0)
    assert all(c.verdict == "inconclusive" for c in claims_lib.evaluate(specs, weak))


def test_split_disagreement_makes_the_frontier_claims_inconclusive():
    cfg, _ = claim_keys("pareto_superres")
    rows = pareto_rows()
    for seed in rows:  # on the validation photos the Hourglass is 3 dB worse than the conventional picks
        rows[seed] = [dict(r, val_photo_psnr=[x - 4.0 for x in r["val_photo_psnr"]]) if r["family"] == "hourglass"
                      else r for r in rows[seed]]
    m = measures.pareto_superres(photo_runs(rows, "superres"), cfg)
    assert m["mean_gap_db_swapped"].value < 0 < m["mean_gap_db"].value and m["split_signs_agree"] == 0.0
    judged = {c.id: c for c in claims_lib.evaluate(OmegaConf.to_container(cfg.figure.claims), m)}
    assert judged["hourglass_gap_vs_plain"].verdict == "inconclusive" and "split_signs_agree" in judged["hourglass_gap_vs_plain"].reason


def test_measures_refuse_runs_of_another_task():
    cfg, _ = claim_keys("pareto_denoise")
    with pytest.raises(ValueError, match="superres"):
        measures.pareto_denoise(photo_runs(pareto_rows(), "superres"), cfg)


LADDER = [10000, 15000, 23000, 35000, 53000]  # the default config's budgets
ALLOCATIONS = ((1, 0, 3), (1, 1, 2), (3, 0, 1), (3, 1, 0))  # (depth, d_z level, d_h rank order)


def trend_rows(seed, deep_from=2, lift_gain=0.2):
    """The ladder: at budget k the winner (validation 9 dB, others 5 dB) is depth 1 with the wide
    d_z below budget index ``deep_from`` and depth 3 with the wide d_z from it on. Conventional: the
    depth-1 allocation always wins. Every Hourglass shape also has a trained lift scoring
    ``lift_gain`` dB higher on every test photo (fixed minus trained = -lift_gain)."""
    rows = []
    for k, budget in enumerate(LADDER):
        for depth, wide, order in ALLOCATIONS:
            win = wide == 1 and depth == (1 if k < deep_from else 3)
            val = 9.0 if win else 5.0
            d_z, d_h = (64 + 32 * k) * (2 if wide else 1), 1 + order
            rows.append(prow("hourglass", budget, val, [val] * 3, [val] * 2, depth=depth, d_z=d_z, d_h=d_h))
            rows.append(prow("hourglass", budget + 64 * d_z, val, [val + lift_gain] * 3, [val] * 2, depth=depth,
                             d_z=d_z, d_h=d_h, train_lift=True))
        for depth in (1, 2, 3, 4):
            val = 9.0 if depth == 1 else 5.0
            rows.append(prow("conventional", budget, val, [val] * 3, [val] * 2, depth=depth, d_h=(100 + 50 * k) // depth))
    return rows


def test_shape_trend_measures_read_the_ladder_winners_per_seed_with_the_permutation_null():
    cfg, keys = claim_keys("shape_trends")
    runs = photo_runs({0: trend_rows(0), 1: trend_rows(1, deep_from=3)})
    m = measures.shape_trends(runs, cfg)
    assert keys <= set(m)
    # every photo scores like validation: seed 0 depths (1, 1, 3, 3, 3), rho = sqrt(3)/2; seed 1 (1, 1, 1, 3, 3),
    # rho = sqrt(3)/2 as well; on each of the 3 test photos the mean over seeds is sqrt(3)/2
    r = math.sqrt(3) / 2
    assert m["rho_depth"].units == pytest.approx([r] * 3) and m["rho_depth"].n == 3 and m["rho_depth"].estimator["unit"] == "photos"
    assert m["rho_depth_seeds"].units == pytest.approx([r] * 2)
    assert m["rho_depth_null_p"] == pytest.approx([12 / 120] * 2)
    assert m["rho_d_z"].units == pytest.approx([0.0] * 3)  # the wide d_z always wins: no trend
    # d_h rank of the winner: order 2 of (3, 2, 1, 0) -> 2/3 while shallow, order 0 -> 0 when deep
    assert m["rho_d_h"].units == pytest.approx([-r] * 3)
    assert m["rho_depth_conventional"].units == pytest.approx([0.0] * 3)
    assert m["rho_depth_hourglass_minus_conventional"].units == pytest.approx([r] * 3)
    assert m["ladder_budgets"] == 5 and m["ladder_allocations"] == 4 and m["lr_edge_winners"] == 0
    # the lift: fixed minus trained = -0.2 dB on every photo at every shape
    assert m["fixed_minus_trained_db_largest"].units == pytest.approx([-0.2] * 3)
    assert m["fixed_minus_trained_db_all_shapes"].value == pytest.approx(-0.2)
    assert m["lift_shapes"] == 20 and m["lift_shapes_fixed_better"] == 0
    assert all(r["gain_db"] == pytest.approx(-0.2) for r in m["lift_gain_by_shape"])
    assert m["lift_convergence_shift_over_seed_sd"] == 0.0  # the curves never move
    judged = {c.id: c for c in claims_lib.evaluate(OmegaConf.to_container(cfg.figure.claims), m)}
    assert judged["fixed_lift_costs_little"].verdict == "partial"  # -0.2 dB on every photo: in [-0.3, -0.1)
    assert judged["deeper_with_budget"].verdict == "replicated"  # rho = sqrt(3)/2 on every photo and seed, converged
    # one photo where the shallow allocations win everywhere: its rho is 0 and the interval widens
    rows = {s: [dict(r, test_photo_psnr=[r["test_photo_psnr"][0], r["test_photo_psnr"][1],
                                         9.0 if (r["family"] == "hourglass" and r["depth"] == 1 and r["d_z"] >= 128) else 5.0])
                for r in trend_rows(s, deep_from=2 + s)] for s in (0, 1)}
    three = measures.shape_trends(photo_runs(rows), cfg)
    assert three["rho_depth"].units[2] < r
    judged = {c.id: c.verdict for c in claims_lib.evaluate(OmegaConf.to_container(cfg.figure.claims), three)}
    assert judged["deeper_with_budget"] in ("undecided", "partial")  # no longer replicated: (r, r, lower) over photos


def test_a_short_ladder_makes_the_trend_claims_inconclusive():
    cfg, _ = claim_keys("shape_trends")
    rows = {s: [r for r in trend_rows(s) if r["trainable"] < 40000 or r["train_lift"]] for s in (0, 1)}
    m = measures.shape_trends(photo_runs(rows), cfg)
    assert m["ladder_budgets"] == 4
    verdicts = {c.id: c for c in claims_lib.evaluate(OmegaConf.to_container(cfg.figure.claims), m)}
    assert verdicts["deeper_with_budget"].verdict == "inconclusive" and "ladder_budgets" in verdicts["deeper_with_budget"].reason


@pytest.mark.parametrize("figure", ["pareto_denoise", "pareto_superres", "shape_trends"])
def test_every_claim_can_reach_every_verdict(figure):
    cfg, _ = claim_keys(figure)
    for spec in OmegaConf.to_container(cfg.figure.claims):
        op, r, _ = claims_lib.parse_rule(spec["replicated"])
        _, p, _ = claims_lib.parse_rule(spec["partial"])
        s = 1.0 if op in (">=", ">") else -1.0  # the direction of the effect
        cases = {"replicated": (r + 0.5 * s, r + 1.0 * s), "partial": ((p + r) / 2 - 0.01 * s, (p + r) / 2 + 0.01 * s),
                 "not_replicated": (p - 1.0 * s, (p + r) / 2), "undecided": (p - 1.0 * s, r + 1.0 * s)}
        for verdict, (lo, hi) in cases.items():
            lo, hi = min(lo, hi), max(lo, hi)
            got, _ = claims_lib.judge((lo + hi) / 2, (lo, hi), spec["replicated"], spec["partial"])
            assert got == verdict, (spec["id"], verdict, got)
