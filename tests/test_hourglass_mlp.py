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


def test_default_figures_use_photo_patches_with_equal_grids_and_rate_counts_per_family():
    for figure in ("pareto_denoise", "pareto_superres", "shape_trends"):
        run = C.compose(f"hourglass_mlp/{figure}", "cpu", "default").figure.run
        assert run.data.source == "skimage" and run.data.patch >= 16
        assert list(run.module.image_shape) == [1, run.data.patch, run.data.patch]
        sizes = {}
        for shape in grid_shapes(OmegaConf.to_container(run.module.grid)):
            if not shape.train_lift:
                sizes[shape.family] = sizes.get(shape.family, 0) + 1
        assert len(set(sizes.values())) == 1 and len(sizes) == 3, sizes
        assert len({len(v) for v in run.module.lrs.values()}) == 1 and len(run.module.lrs.hourglass) >= 3
        assert len(C.run_configs(C.compose(f"hourglass_mlp/{figure}", "cpu", "default"))) >= 3  # seeds


@pytest.mark.parametrize("scale", ["smoke", "default", "full"])
def test_denoise_figures_share_their_runs(scale):
    hashes = {f: [C.run_hash(r) for r in C.run_configs(C.compose(f"hourglass_mlp/{f}", "cpu", scale))]
              for f in ("pareto_denoise", "shape_trends", "pareto_superres")}
    assert hashes["pareto_denoise"] == hashes["shape_trends"]
    assert not set(hashes["pareto_denoise"]) & set(hashes["pareto_superres"])


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


def test_a_baseline_diverged_everywhere_gives_an_inconclusive_claim_not_an_error():
    from replicate import claims
    cfg = C.compose("hourglass_mlp/pareto_denoise", "cpu", "smoke")
    search = {}
    for s in (0, 1, 2):
        rows = shape_rows("hourglass", [(10, 5.0, 5.0, 1, 4), (20, 6.0, 6.0, 2, 4), (40, 7.0, 7.0, 4, 4)], seed=s)
        for fam in ("conventional", "conventional_head"):
            rows += shape_rows(fam, [(15, float("nan"), float("nan"), 1, 8)], seed=s)
        search[s] = rows
    m = measures.pareto_denoise(search_runs(search), cfg)
    assert math.isnan(m["win_fraction_vs_plain"].value) and m["frontier_points_vs_plain"] == 0
    judged = {c.id: c for c in claims.evaluate(OmegaConf.to_container(cfg.figure.claims), m)}
    assert judged["hourglass_dominates_plain"].verdict == "inconclusive"
    assert "frontier_points_vs_plain" in judged["hourglass_dominates_plain"].reason


def test_the_digits_option_still_builds():
    from hydra.utils import instantiate
    cfg = OmegaConf.load(C.CONFIG_DIR / "training" / "hourglass_mlp" / "digits_restoration.yaml")
    run = OmegaConf.create({"figure": {"run": cfg}}).figure.run
    module, data = instantiate(run.module, _convert_="all"), instantiate(run.data, _convert_="all")
    sizes = {f: sum(s.family == f for s in module.shapes) for f in ("hourglass", "conventional", "conventional_head")}
    assert set(sizes.values()) == {9} and data.image_shape == (1, 8, 8) and len(data.held_out("test")) == 269


# --------------------------------------------------------------------------- measures (one per figure)
from replicate import claims as claims_lib  # noqa: E402
from replicate.papers.hourglass_mlp import measures  # noqa: E402

GRID = [2e-3, 4e-3, 8e-3]  # every family's rate grid; the shapes below train at its middle rate


def search_runs(shapes_of_seed, task="denoise"):
    """A stand-in for ``ctx.runs()`` of a search figure: one row per seed whose ``probes.shapes``
    are ``shapes_of_seed[seed]`` (rows of ``shape_rows``'s form; shape fields only)."""
    rows = []
    for seed, shapes in shapes_of_seed.items():
        probes = {"shapes": [{k: v for k, v in r.items() if k != "seed"} for r in shapes],
                  "lrs": {f: GRID for f in ("hourglass", "conventional", "conventional_head")},
                  "task": {"kind": task}, "input_psnr": {"test": 20.0 + seed, "val": 0.0}}
        rows.append({"seed": seed, "status": "finished", "probes": probes})
    return pd.DataFrame(rows)


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


def pareto_search(offsets=(0.0, -2.0, 0.5)):
    """Three seeds. Hourglass (10, 20, 40 params; validation 6, 8, 10) with test PSNR = validation
    + the seed's offset d; plain conventional (15, 30; test 5, 7) and conventional + head (the
    same, 1 dB lower). Distinct frontier points in [15, 30]: 15, 20, 30; Hourglass minus plain:
    1 + d, 3 + d, 1 + d (mean 5/3 + d); minus head: 1 dB more."""
    out = {}
    for seed, d in enumerate(offsets):
        hourglass = [(10, 6.0, 6.0, 1, 64), (20, 8.0, 8.0, 2, 32), (40, 10.0, 10.0, 3, 16)]
        rows = [dict(r, test_psnr=r["test_psnr"] + d, fixed=256)
                for r in shape_rows("hourglass", hourglass, seed=seed, lr=GRID[1])]
        rows += shape_rows("conventional", [(15, 5.0, 5.0, 1, 256), (30, 7.0, 7.0, 2, 384)], seed=seed, lr=GRID[1])
        rows += shape_rows("conventional_head", [(15, 5.0, 4.0, 1, 256), (30, 7.0, 6.0, 2, 384)], seed=seed, lr=GRID[1])
        out[seed] = rows
    return out


@pytest.mark.parametrize("figure", ["pareto_denoise", "pareto_superres"])
def test_pareto_measures_are_per_seed_statistics_with_t_intervals(figure):
    cfg, keys = claim_keys(figure)
    task = "denoise" if figure == "pareto_denoise" else "superres"
    runs = search_runs(pareto_search(), task)
    m = measures.pareto_denoise(runs, cfg) if figure == "pareto_denoise" else measures.pareto_superres(runs, cfg)
    assert keys <= set(m)
    # per seed (d = 0, -2, +0.5): mean gap over plain 5/3, -1/3, 13/6; win share 1, 1/3, 1
    gap = m["mean_gap_db_vs_plain"]
    assert gap.units == pytest.approx((5 / 3, -1 / 3, 13 / 6)) and gap.value == pytest.approx(7 / 6)
    assert gap.interval == pytest.approx(t_interval([5 / 3, -1 / 3, 13 / 6])) and gap.n == 3
    win = m["win_fraction_vs_plain"]
    assert win.units == pytest.approx((1.0, 1 / 3, 1.0)) and win.value == pytest.approx(7 / 9)
    assert m["mean_gap_db_vs_head"].value == pytest.approx(7 / 6 + 1)
    assert m["win_fraction_vs_head"].units == pytest.approx((1.0, 1 / 3, 1.0))  # seed 1: gaps 0, 2, 0 dB
    assert m["frontier_points_vs_plain"] == 3 and m["frontier_points_vs_head"] == 3
    assert all(m[f"lr_edge_frontier_points_{k}"] == 0 for k in ("hourglass", "conventional", "conventional_head"))
    assert m["min_gap_db_vs_plain"] == pytest.approx(-1.0) and m["seeds"] == 3
    assert m["input_psnr_db"] == pytest.approx(21.0)
    lo, hi = gap.interval
    assert lo <= gap.value <= hi


def test_pareto_measures_do_not_depend_on_row_order_and_count_edge_rates_on_every_seed():
    cfg, _ = claim_keys("pareto_denoise")
    search = pareto_search()
    search[2] = [dict(r, lr=GRID[0]) if r["family"] == "conventional" and r["trainable"] == 30 else r
                 for r in search[2]]  # seed 2 picks the grid's smallest rate for one frontier shape
    runs = search_runs(search)
    m = measures.pareto_denoise(runs, cfg)
    shuffled = measures.pareto_denoise(runs.iloc[::-1].reset_index(drop=True), cfg)
    assert m["lr_edge_frontier_points_conventional"] == 1 and m["lr_edge_frontier_points_hourglass"] == 0
    assert shuffled["mean_gap_db_vs_plain"].units == m["mean_gap_db_vs_plain"].units  # units in seed order
    verdicts = {c.id: c for c in claims_lib.evaluate(OmegaConf.to_container(cfg.figure.claims), m)}
    assert verdicts["hourglass_dominates_plain"].verdict == "inconclusive"
    assert "lr_edge_frontier_points_conventional" in verdicts["hourglass_dominates_plain"].reason


def test_measures_refuse_runs_of_another_task():
    cfg, _ = claim_keys("pareto_denoise")
    with pytest.raises(ValueError, match="superres"):
        measures.pareto_denoise(search_runs(pareto_search(), "superres"), cfg)


def trend_search():
    """Three seeds. Hourglass, fixed lift: (10, 20, 40 params; validation = test 6, 8, 10) with
    depth 1, 2, 3, d_z 384, 512, 768 and d_h 128, 64, 32: rho +1, +1, -1 on every seed. The same
    shapes with a trained lift: 2 more parameters, test PSNR 0.5 + 0.1 seed dB lower. Conventional
    + head (15, 30, 45): depth 1, 2, 3 and hidden width 256, 384, 512 (seeds 0, 2) or reversed
    (seed 1): rho of d_h +1, -1, +1."""
    out = {}
    for seed in range(3):
        rows = []
        for p, val, depth, d_z, d_h in ((10, 6.0, 1, 384, 128), (20, 8.0, 2, 512, 64), (40, 10.0, 3, 768, 32)):
            rows += shape_rows("hourglass", [(p, val, val, depth, d_h)], seed=seed, lr=GRID[1], d_z=d_z)
            rows += [dict(r, train_lift=True, trainable=p + 2, test_psnr=val - 0.5 - 0.1 * seed)
                     for r in shape_rows("hourglass", [(p, val, val, depth, d_h)], seed=seed, lr=GRID[1], d_z=d_z)]
        widths = (256, 384, 512) if seed != 1 else (512, 384, 256)
        rows += shape_rows("conventional_head", [(15, 5.0, 5.0, 1, widths[0]), (30, 7.0, 7.0, 2, widths[1]),
                                                 (45, 9.0, 9.0, 3, widths[2])], seed=seed, lr=GRID[1])
        rows += shape_rows("conventional", [(15, 5.0, 5.0, 1, 256), (30, 7.0, 7.0, 1, 384), (45, 9.0, 9.0, 1, 512)],
                           seed=seed, lr=GRID[1])
        out[seed] = rows
    return out


def test_shape_trend_measures_are_per_seed_with_paired_contrasts():
    cfg, keys = claim_keys("shape_trends")
    m = measures.shape_trends(search_runs(trend_search()), cfg)
    assert keys <= set(m)
    assert m["rho_depth"].units == pytest.approx((1.0,) * 3) and m["rho_d_z"].value == pytest.approx(1.0)
    assert m["rho_d_h"].units == pytest.approx((-1.0,) * 3)
    contrast = m["rho_d_h_hourglass_minus_conventional_head"]  # -1 - (+1, -1, +1) = -2, 0, -2
    assert contrast.units == pytest.approx((-2.0, 0.0, -2.0)) and contrast.value == pytest.approx(-4 / 3)
    assert contrast.interval == pytest.approx(t_interval([-2.0, 0.0, -2.0]))
    assert m["rho_depth_hourglass_minus_conventional_head"].units == pytest.approx((0.0,) * 3)
    assert m["rho_depth_conventional"].value == 0.0  # depth never changes on that frontier
    # lift: distinct frontier points in [12, 40]: 20, 40 (fixed) and 12, 22 (trained); fixed minus trained
    # at 12: 6 - (6 - e), at 20: 8 - (6 - e), at 22: 8 - (8 - e), at 40: 10 - (8 - e), e = 0.5 + 0.1 seed:
    # mean 1 + e
    lift = m["mean_gap_db_fixed_minus_trained"]
    assert lift.units == pytest.approx((1.5, 1.6, 1.7)) and lift.value == pytest.approx(1.6) and lift.n == 3
    assert lift.interval == pytest.approx(t_interval([1.5, 1.6, 1.7]))
    assert m["frontier_points_lift"] == 4 and m["min_gap_db_fixed_minus_trained"] == pytest.approx(0.5)
    assert m["distinct_best_shapes"] == 3 and m["distinct_best_shapes_conventional_head"] == 3
    assert m["same_shape_gain_db_trained_mean"] == pytest.approx(-0.6)  # trained - fixed, seed mean


def test_a_seed_with_too_few_frontier_shapes_makes_the_trend_claims_inconclusive():
    cfg, _ = claim_keys("shape_trends")
    search = trend_search()
    search[2] = [dict(r, val_psnr=5.0) if r["family"] == "hourglass" and r["trainable"] == 20 else r
                 for r in search[2]]  # seed 2: the 20-parameter shape loses to the 10-parameter one
    m = measures.shape_trends(search_runs(search), cfg)
    assert m["distinct_best_shapes"] == 2 and math.isnan(m["rho_depth"].value)
    verdicts = {c.id: c.verdict for c in claims_lib.evaluate(OmegaConf.to_container(cfg.figure.claims), m)}
    assert verdicts["deeper_with_budget"] == "inconclusive"
