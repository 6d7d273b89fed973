"""Gated Attention (Qiu et al. 2025): gate equations, gradients, probes, the LightningModule."""

import json
import math
import re

import lightning as L
import pytest
import torch

from replicate.data.bigram_backcopy import BigramBackcopyDataModule
from replicate.nn.transformer import BOS, LMConfig, record
from replicate.papers.gated_attention.model import (ElementwiseGate, HeadwiseGate,
                                                    InputIndependentGate, build_gated_lm,
                                                    gate_parameters)
from replicate.papers.gated_attention.module import GatedAttentionLM, lr_lambda, param_groups
from replicate.papers.gated_attention.probes import (ProbeAccumulator, first_token_attention,
                                                     sink_rate, value_norm_sums)

CFG = dict(n_layer=2, d_model=32, n_head=4, max_len=16)


def lm(gate, **kw):
    torch.manual_seed(0)
    return build_gated_lm(LMConfig(**{**CFG, **kw}), gate).eval()


def tokens(B=2, T=12):
    x = torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(1))
    x[:, 0] = BOS
    return x


# --------------------------------------------------------------------------- gate equations


def test_headwise_gate_with_zero_weights_halves_y_exactly():
    gate = HeadwiseGate(d_model=32, n_head=4, head_dim=8)
    assert gate.proj.weight.shape == (4, 32) and gate.proj.bias is None
    torch.nn.init.zeros_(gate.proj.weight)
    x, y = torch.randn(2, 5, 32), torch.randn(2, 5, 4, 8)
    assert torch.equal(gate(x, y), 0.5 * y)


def test_gate_scores_match_a_hand_computation():
    x, y = torch.randn(2, 5, 32), torch.randn(2, 5, 4, 8)
    head = HeadwiseGate(32, 4, 8)
    s = torch.sigmoid(x @ head.proj.weight.T)  # (2, 5, 4): one score per head
    assert torch.allclose(head(x, y), y * s[..., None], atol=1e-6)
    elem = ElementwiseGate(32, 4, 8)
    assert elem.proj.weight.shape == (4 * 8, 32)  # W_theta: d_model -> H * d_head
    s = torch.sigmoid(x @ elem.proj.weight.T).view(2, 5, 4, 8)
    assert torch.allclose(elem(x, y), y * s, atol=1e-6)
    free = InputIndependentGate(32, 4, 8)
    assert torch.equal(free(x, y), 0.5 * y)  # theta starts at 0
    with torch.no_grad():
        free.theta.fill_(2.0)
    assert torch.allclose(free(x, y), y * torch.sigmoid(torch.tensor(2.0)))


def test_gate_init_is_normal_002_like_the_official_q_proj():
    torch.manual_seed(0)
    g = ElementwiseGate(256, 8, 32)
    assert abs(g.proj.weight.std().item() - 0.02) < 0.001 and abs(g.proj.weight.mean().item()) < 0.001


@pytest.mark.parametrize("kind", ["headwise", "elementwise", "input_independent"])
def test_output_gate_in_the_model_multiplies_the_sdpa_output(kind):
    base, gated = lm("none"), lm(kind)
    # the gates are created after the base model, so the shared weights are identical
    gated.load_state_dict(base.state_dict(), strict=False)
    for p in gate_parameters(gated):
        torch.nn.init.zeros_(p)
    x = tokens()
    with torch.no_grad():
        h = base.blocks[0].norm1(base.embed(x))
        # o_proj has no bias: a 0.5 gate on y is a 0.5 factor on the attention output
        assert torch.allclose(gated.blocks[0].attn(h), 0.5 * base.blocks[0].attn(h), atol=1e-6)


def test_value_gate_acts_on_values_before_attention():
    base, gated = lm("none"), lm("value")
    gated.load_state_dict(base.state_dict(), strict=False)
    attn = gated.blocks[0].attn
    assert attn.gate is None and attn.value_gate is not None
    x = tokens()
    with torch.no_grad(), record(base) as rb, record(gated) as rg:
        base(x)
        gated(x)
        h = gated.blocks[0].norm1(gated.embed(x))
        score = torch.sigmoid(attn.value_gate.proj(h)).view(2, 12, 4, 8)
    assert torch.allclose(rg[0]["v"], rb[0]["v"] * score, atol=1e-6)
    assert torch.allclose(rg[0]["value_gate"], score, atol=1e-6)


@pytest.mark.parametrize("kind", ["headwise", "elementwise", "value", "input_independent"])
def test_gradients_reach_the_gate_weights(kind):
    model = lm(kind).train()
    x = tokens()
    model.loss(x, torch.roll(x, -1, 1)).backward()
    params = gate_parameters(model)
    assert len(params) == CFG["n_layer"]
    for p in params:
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_gated_model_shares_the_baseline_weights_and_adds_few_parameters():
    base, head, elem = lm("none"), lm("headwise"), lm("elementwise")
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(head) - n(base) == 2 * 32 * 4
    assert n(elem) - n(base) == 2 * 32 * 32
    for k, v in base.state_dict().items():
        assert torch.equal(head.state_dict()[k], v)
    with pytest.raises(ValueError, match="gate="):
        lm("sometimes")


# --------------------------------------------------------------------------- probes


def test_first_token_attention_on_a_hand_built_map():
    # B=1, H=2, T=3. Head 0 puts 0.5 and 0.2 on token 0 (queries 1, 2); head 1 puts 1.0 and 0.6.
    attn = torch.tensor([[[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]],
                          [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.6, 0.2, 0.2]]]])
    assert torch.allclose(first_token_attention(attn), torch.tensor([0.35, 0.8], dtype=torch.float64))
    mask = torch.tensor([[False, False, True]])  # only query 2
    assert torch.allclose(first_token_attention(attn, mask), torch.tensor([0.2, 0.6], dtype=torch.float64))
    assert sink_rate([[0.35, 0.8], [0.1, 0.29]]) == 0.5
    assert sink_rate([[0.35, 0.8], [0.1, 0.29]], epsilon=0.9) == 0.0


def test_value_norm_sums_by_hand():
    v = torch.zeros(1, 3, 1, 2)
    v[0, 0, 0] = torch.tensor([3.0, 4.0])  # BOS norm 5
    v[0, 1, 0] = torch.tensor([0.0, 1.0])
    v[0, 2, 0] = torch.tensor([0.0, 3.0])
    assert value_norm_sums(v) == (5.0, 4.0, 1, 2)


def test_probe_accumulator_against_direct_computation():
    model = lm("headwise")
    x = tokens(B=3, T=10)
    acc = ProbeAccumulator()
    acc.update(model, x, torch.roll(x, -1, 1))
    out = acc.summary()
    with torch.no_grad(), record(model) as rec:
        _, hidden = model(x, return_hidden=True)
    for layer in range(2):
        want = rec[layer]["attn"][:, :, 1:, 0].mean().item()
        assert out["first_token_attention"][layer] == pytest.approx(want, rel=1e-5)
        assert out["max_abs_hidden"][layer] == pytest.approx(hidden[layer].abs().max().item())
        assert out["gate_mean"][layer] == pytest.approx(rec[layer]["gate"].mean().item(), rel=1e-5)
    assert 0.0 < out["gate_quantiles"]["0.5"] < 1.0
    # micro-batching (a small attention-memory budget) gives the same numbers
    small = ProbeAccumulator()
    small.update(model, x, torch.roll(x, -1, 1), max_attn_bytes=1)
    small = small.summary()
    assert small["n_batches"] == 1 and small["n_sequences"] == 3
    for key in ("first_token_attention", "max_abs_hidden", "value_norm_ratio", "gate_mean", "val_loss"):
        assert small[key] == pytest.approx(out[key], rel=1e-5), key
    assert sum(out["gate_hist"]["fraction"]) == pytest.approx(1.0)
    json.dumps(out)


@pytest.fixture(scope="module")
def bbm(tmp_path_factory):
    dm = BigramBackcopyDataModule(seq_len=16, batch_size=8, max_steps=4, val_batches=2,
                                  max_bytes=200_000, cache_dir=str(tmp_path_factory.mktemp("c")))
    dm.setup()
    return dm


def module(gate="none", **optim):
    model = dict(CFG, mlp="relu", norm="layer", pos="learned", init="torch_default", gate=gate)
    return GatedAttentionLM(model, {"lr": 3e-3, "betas": [0.9, 0.99], "weight_decay": 1e-4,
                                    "max_steps": 4, **optim})


@pytest.mark.parametrize("gate", ["none", "headwise", "elementwise", "value", "input_independent"])
def test_probe_metrics_on_bigram_backcopy(gate, bbm):
    out = module(gate).probe_metrics(bbm)
    json.loads(json.dumps(out))
    assert out["n_batches"] == 2 and out["gate"] == gate and math.isfinite(out["val_loss"])
    for key in ("first_token_attention", "first_token_attention_trigger",
                "first_token_attention_non_trigger", "max_abs_hidden", "value_norm_ratio"):
        assert len(out[key]) == 2 and all(math.isfinite(v) for v in out[key]), key
    assert len(out["first_token_attention_per_head"][0]) == 4
    assert 0.0 <= out["sink_rate"] <= 1.0
    if gate == "none":
        assert out["gate_mean"] is None and out["gate_hist"] is None
    else:
        assert len(out["gate_mean"]) == 2 and len(out["gate_mean_trigger"]) == 2
        assert len(out["gate_hist"]["fraction"]) == 20


# --------------------------------------------------------------------------- module


def test_training_and_validation_log_losses(bbm, tmp_path):
    m = module("headwise")
    trainer = L.Trainer(max_steps=4, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, val_check_interval=2, check_val_every_n_epoch=None,
                        num_sanity_val_steps=0, default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(m, datamodule=bbm)
    assert trainer.global_step == 4
    assert math.isfinite(float(trainer.callback_metrics["train_loss"]))
    assert math.isfinite(float(trainer.callback_metrics["val_loss"]))


def test_nan_loss_does_not_crash(bbm):
    m = module("headwise")
    with torch.no_grad():
        m.model.tok_emb.weight[BOS] = float("nan")
    x, y = next(iter(bbm.train_dataloader()))
    m.log = lambda *a, **k: None  # no trainer attached
    loss = m.training_step((x, y), 0)
    assert not math.isfinite(loss.item())
    loss.backward()  # and backward still runs
    out = m.probe_metrics(bbm)
    assert not math.isfinite(out["val_loss"]) and math.isnan(out["max_abs_hidden"][0])
    json.dumps(out)


def test_optimizer_groups_and_schedule():
    m = module("input_independent", warmup_steps=10, schedule="cosine", max_steps=110, min_lr_ratio=0.1)
    opt = m.configure_optimizers()["optimizer"]
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    ids = lambda g: {id(p) for p in g["params"]}  # noqa: E731
    assert id(m.model.blocks[0].attn.q_proj.weight) in ids(decay)
    assert id(m.model.tok_emb.weight) in ids(decay)
    assert id(m.model.blocks[0].norm1.weight) in ids(no_decay)
    assert id(m.model.blocks[0].attn.gate.theta) in ids(no_decay)
    assert len(ids(decay)) + len(ids(no_decay)) == len(list(m.parameters()))
    head = module("headwise")
    groups = param_groups(head.model, 0.1)
    assert id(head.model.blocks[0].attn.gate.proj.weight) in {id(p) for p in groups[0]["params"]}
    assert lr_lambda(0, 10, "cosine", 110, 0.1) == pytest.approx(0.1)
    assert lr_lambda(9, 10, "cosine", 110, 0.1) == pytest.approx(1.0)
    assert lr_lambda(60, 10, "cosine", 110, 0.1) == pytest.approx(0.55)
    assert lr_lambda(110, 10, "cosine", 110, 0.1) == pytest.approx(0.1)
    assert lr_lambda(500, 0, "constant", 110, 0.0) == 1.0
    with pytest.raises(TypeError, match="unknown optim keys"):
        module(learning_rate=1.0)
    with pytest.raises(TypeError, match="unknown LMConfig keys"):
        GatedAttentionLM({"layers": 2}, {})


# --------------------------------------------------------------------------- analysis (claims)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from scipy import stats  # noqa: E402

from replicate.papers.gated_attention import analysis as A  # noqa: E402

T2 = stats.t.ppf(0.975, 2)  # t quantile of a 95% interval over 3 units


def sink_runs(first: dict[str, list[float]]) -> pd.DataFrame:
    rows = [{"gate": g, "seed": s, "status": "finished", "final_val_loss": 1.0, "wall_seconds": 1.0,
             "probes": {"first_token_attention_mean": v, "value_norm_ratio": [0.5],
                        "gate_mean": None if g == "none" else [0.3]}}
            for g, vals in first.items() for s, v in enumerate(vals)]
    return pd.DataFrame(rows)


def test_sink_measurements_by_hand():
    runs = sink_runs({"none": [0.4, 0.5, 0.6], "headwise": [0.1, 0.1, 0.1], "value": [0.2, 0.3, 0.4]})
    m = A.sink_measurements(A.sink_table(runs), 0.3, gates=("headwise", "value"))
    base = m["baseline_first_token"]
    assert base.value == pytest.approx(0.5) and base.n == 3 and base.units == (0.4, 0.5, 0.6)
    half = T2 * 0.1 / np.sqrt(3)  # sd of (0.4, 0.5, 0.6) is 0.1
    assert base.interval == pytest.approx((0.5 - half, 0.5 + half))
    assert m["baseline_first_token_min_seed"].value == pytest.approx(0.4)
    assert m["sink_cut_headwise"].value == pytest.approx(5.0)   # 0.5 / 0.1
    assert m["value_over_headwise"].value == pytest.approx(3.0)  # 0.3 / 0.1
    # delta method on the log ratio: headwise is constant, so Var = (s_a / a)^2 / n = (0.1 / 0.5)^2 / 3
    half = T2 * 0.2 / np.sqrt(3)
    assert m["sink_cut_headwise"].interval == pytest.approx((5 * np.exp(-half), 5 * np.exp(half)))
    assert m["baseline_sink_seeds"].value == 3  # 0.4, 0.5 and 0.6 all reach the threshold 0.3


def test_sink_claims_are_inconclusive_without_a_baseline_sink():
    from replicate import claims
    spec = yaml.safe_load(open("configs/figure/gated_attention/attention_sink.yaml"))
    threshold = spec["measure"]["sink_threshold"]
    for c in spec["claims"]:  # every sink claim requires the config's own threshold
        assert c["requires"] == {"baseline_first_token_lower": f">= {threshold}",
                                 "baseline_first_token_min_seed": f">= {threshold}"}
    # the shipped default-scale baseline: 0.272 / 0.270 / 0.117, no seed above 0.3
    runs = sink_runs({"none": [0.272, 0.270, 0.117], "headwise": [0.05, 0.1, 0.05],
                      "elementwise": [0.05, 0.1, 0.05], "value": [0.15, 0.38, 0.0002],
                      "input_independent": [0.3, 0.3, 0.2]})
    judged = claims.evaluate(spec["claims"], A.sink_measurements(A.sink_table(runs), threshold))
    assert {c.verdict for c in judged} == {"inconclusive"}
    assert all("baseline_first_token" in c.reason for c in judged)
    runs = sink_runs({"none": [0.5, 0.45, 0.4], "headwise": [0.05, 0.05, 0.05],
                      "elementwise": [0.05, 0.05, 0.05], "value": [0.2, 0.2, 0.2],
                      "input_independent": [0.3, 0.3, 0.3]})
    judged = {c.id: c for c in claims.evaluate(spec["claims"], A.sink_measurements(A.sink_table(runs), threshold))}
    assert judged["sink_cut_headwise"].verdict == "replicated"  # 9x in every resample
    assert judged["value_gate_weaker"].verdict == "replicated"  # 4x
    # every seed above 0.3 but a wide interval whose lower end is below it: still inconclusive
    runs = sink_runs({"none": [0.31, 0.9, 0.31], "headwise": [0.05, 0.05, 0.05],
                      "elementwise": [0.05, 0.05, 0.05], "value": [0.2, 0.2, 0.2],
                      "input_independent": [0.3, 0.3, 0.3]})
    m = A.sink_measurements(A.sink_table(runs), threshold)
    assert m["baseline_first_token_lower"].value == pytest.approx(m["baseline_first_token"].interval[0])
    judged = claims.evaluate(spec["claims"], m)
    assert {c.verdict for c in judged} == {"inconclusive"}
    assert all("baseline_first_token_lower" in c.reason for c in judged)
    # a diverged baseline seed: no probes, NaN first-token attention -> inconclusive, no crash
    runs = sink_runs({"none": [0.5, 0.5, 0.5], "headwise": [0.05, 0.05, 0.05]})
    runs.loc[0, ["status", "probes"]] = ["diverged", {}]
    m = A.sink_measurements(A.sink_table(runs), threshold)  # absent variants: NaN, inconclusive
    assert not np.isfinite(m["baseline_first_token_min_seed"].value)
    assert {c.verdict for c in claims.evaluate(spec["claims"], m)} == {"inconclusive"}
    assert A.shown(A.wide(A.sink_table(runs), "first_token")).loc[0, "none"] == "diverged"


def test_spikes_by_hand():
    flat = [{"train_loss": v} for v in [3.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]]
    assert A.spikes(flat, window=2, jump=0.25) == 0
    bump = [{"train_loss": v} for v in [3.0, 2.0, 1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0]]
    assert A.spikes(bump, window=2, jump=0.25) == 2  # two separate excursions above min + 0.25
    assert A.spikes(flat + [{"train_loss": float("nan")}], window=2, jump=0.25) == 1


def lr_runs(loss: dict[tuple[str, float], list[float]]) -> pd.DataFrame:
    rows = [{"gate": g, "lr": lr, "seed": s,
             "status": "diverged" if not np.isfinite(v) else "finished", "final_val_loss": v,
             "train": [{"train_loss": 2.0}] * 8 + ([] if np.isfinite(v) else [{"train_loss": v}])}
            for (g, lr), vals in loss.items() for s, v in enumerate(vals)]
    return pd.DataFrame(rows)


def test_stability_measurements_by_hand():
    nan = float("nan")
    runs = lr_runs({("none", 0.01): [2.0, 2.1, 2.2], ("headwise", 0.01): [1.9, 2.0, 2.0],
                    ("none", 0.1): [nan, 3.5, 2.5], ("headwise", 0.1): [2.5, 2.6, 2.7],
                    ("none", 0.001): [2.3, 2.3, 2.3], ("headwise", 0.001): [2.3, 2.3, 2.3]})
    t = A.stability_table(runs, failed_above=3.0, spike_window=2, spike_jump=0.25)
    assert t.failed.tolist() == [False] * 6 + [True, True, False] + [False] * 9
    assert "loss" not in t  # no loss is substituted for a failed run
    m = A.stability_measurements(t, high_lr=0.1)
    assert m["baseline_failures"].value == 2 and m["baseline_failures"].interval is None
    assert m["lrs_only_baseline_fails"].units == (1.0, 1.0, 0.0)
    assert m["failed_lrs_baseline_minus_headwise"].units == (1.0, 1.0, 0.0)
    # per seed at lr 0.1, only where both losses are finite: seed 0's baseline diverged (NaN),
    # 3.5 - 2.6, 2.5 - 2.7; a NaN unit leaves the estimate non-finite (inconclusive)
    gain = m["high_lr_gain_headwise"]
    assert np.isnan(gain.units[0]) and gain.units[1:] == pytest.approx((0.9, -0.2))
    assert not np.isfinite(gain.value)
    # best lr 0.01 for both (0.001 is worse, 0.1 worse): gains 0.1, 0.1, 0.2 -> inside the grid
    assert m["best_loss_gain"].units == pytest.approx((0.1, 0.1, 0.2))
    assert m["best_lr_on_grid_edge"].value == 0
    assert m["spikes_baseline"].value == 1  # the diverged run counts one spike
    assert m["spikes_baseline_minus_gated"].units == (1.0, 0.0, 0.0)
    # no grid lr where every run failed: the window is open, no lr inside it
    assert m["all_train_lr"].value == 0.01 and np.isnan(m["all_fail_lr"].value) and m["lrs_between"].value == 0


def test_failure_window_counts_the_lrs_between_all_train_and_all_fail():
    grid = {0.01: [False, False], 0.03: [False, True], 0.1: [True, False], 0.3: [True, True],
            0.5: [True, True], 1.0: [True, True]}
    t = pd.DataFrame([{"lr": lr, "seed": s, "gate": "none", "failed": f}
                      for lr, fs in grid.items() for s, f in enumerate(fs)])
    assert A.failure_window(t) == (0.01, 0.3, 2)  # 0.03 and 0.1 lie between
    assert A.failure_share(t)["none"].tolist() == [0.0, 0.5, 0.5, 1.0, 1.0, 1.0]
    t.loc[t.lr == 0.01, "failed"] = True  # nothing trains anywhere: no window
    assert A.failure_window(t)[2] == 0 and np.isnan(A.failure_window(t)[0])
    # per variant: the headwise runs fail only from 1.0, the joint window takes the widest ends
    both = pd.concat([t.assign(failed=t.lr >= 0.3),
                      t.assign(gate="headwise", failed=t.lr >= 1.0)])
    m = A.window_measurements(both)
    assert (m["all_train_lr"].value, m["all_fail_lr"].value, m["lrs_between"].value) == (0.1, 1.0, 2)
    assert (m["all_train_lr_none"].value, m["all_fail_lr_none"].value) == (0.1, 0.3)
    assert (m["all_train_lr_headwise"].value, m["lrs_between_headwise"].value) == (0.5, 0)


def test_stability_claims_need_a_baseline_failure_and_a_bracketing_grid():
    from replicate import claims
    spec = yaml.safe_load(open("configs/figure/gated_attention/lr_stability.yaml"))
    runs = lr_runs({("none", 0.01): [2.0, 2.1, 2.2], ("headwise", 0.01): [1.9, 2.0, 2.0],
                    ("none", 0.1): [2.6, 2.6, 2.6], ("headwise", 0.1): [2.5, 2.5, 2.5],
                    ("elementwise", 0.01): [1.9, 2.0, 2.0], ("elementwise", 0.1): [2.5, 2.5, 2.5]})
    t = A.stability_table(runs, failed_above=3.0, spike_window=2, spike_jump=0.25)
    judged = {c.id: c for c in claims.evaluate(spec["claims"], A.stability_measurements(t, high_lr=0.1)
                                                | {"failed_lrs_baseline_minus_elementwise": claims.exact(0, "")})}
    assert judged["gated_survives_where_baseline_fails"].verdict == "inconclusive"
    assert "baseline_failures" in judged["gated_survives_where_baseline_fails"].reason
    assert judged["fewer_spikes"].verdict == "inconclusive"
    assert judged["better_best_loss"].verdict == "inconclusive"  # best lr 0.01 is the grid's edge
    # a large-lr gain on a grid that never reaches "every run fails": inconclusive, not a verdict
    assert judged["headwise_degrades_less"].verdict == "inconclusive"
    assert "lrs_between" in judged["headwise_degrades_less"].reason


def act_runs(max_h: dict[tuple[str, float], list[float]], median: float = 1.0) -> pd.DataFrame:
    rows = [{"gate": g, "lr": lr, "seed": s, "status": "finished" if np.isfinite(v) else "diverged",
             "final_val_loss": 2.0 if np.isfinite(v) else float("nan"),
             "probes": {"max_abs_hidden": [1.0, v], "median_abs_hidden": [0.5, median],
                        "gate_mean": [0.2, 0.4]} if np.isfinite(v) else {}}
            for (g, lr), vals in max_h.items() for s, v in enumerate(vals)]
    return pd.DataFrame(rows)


def test_activation_cut_is_a_geometric_mean_over_the_trained_lrs():
    nan = float("nan")
    runs = act_runs({("none", 0.01): [4.0, 4.0, 4.0], ("headwise", 0.01): [1.0, 1.0, 1.0],
                     ("none", 0.1): [100.0, 100.0, 100.0], ("headwise", 0.1): [400.0, 100.0, 25.0],
                     ("none", 1.0): [nan, 1e4, 1e4], ("headwise", 1.0): [1.0, 1.0, 1.0],
                     ("none", 3.0): [1e6, 1e6, 1e6], ("headwise", 3.0): [1.0, 1.0, 1.0]})
    runs.loc[runs.lr == 3.0, "final_val_loss"] = 3.5  # finished, but failed: divergence noise
    t = A.activation_table(runs, failed_above=3.0)
    assert A.trained_lrs(t, ["none", "headwise"]) == [0.01, 0.1]  # 1.0 diverged, 3.0 failed
    cut = A.activation_cut(t, "headwise")
    # per seed sqrt(4 * 100/400) = 1, sqrt(4 * 1) = 2, sqrt(4 * 4) = 4; geometric mean 2
    assert cut.units == pytest.approx((1.0, 2.0, 4.0)) and cut.value == pytest.approx(2.0)
    half = T2 * np.log(2) / np.sqrt(3)  # the logs 0, ln 2, ln 4 have sd ln 2
    assert cut.interval == pytest.approx((2 * np.exp(-half), 2 * np.exp(half)))
    g = A.gate_score_mean(t, "headwise", 0.1)
    assert g.value == pytest.approx(0.3) and g.interval == pytest.approx((0.3, 0.3)) and g.n == 3
    # max over median of the layer holding the max (median 1.0 there): sqrt(4 * 100) = 20 per seed
    ratio = A.massive_ratio(t)
    assert ratio.units == pytest.approx((20.0, 20.0, 20.0)) and ratio.value == pytest.approx(20.0)
    # every run failed: no trained lr, no ratio and no cut (inconclusive), and no crash
    t = t.assign(trained=False)
    assert A.log_activation_ratio(t, "headwise", A.trained_lrs(t, ["none", "headwise"])).shape == (3, 0)
    assert A.activation_cut(t, "headwise").n == 0 and not np.isfinite(A.massive_ratio(t).value)


def test_loss_analysis_survives_a_diverged_baseline():
    from replicate import claims
    nan = float("nan")
    runs = pd.DataFrame([{"gate": g, "seed": s, "final_val_loss": v}
                         for g, vals in {"none": [2.0, 2.2, 2.1], "headwise": [1.9, 2.0, 2.0]}.items()
                         for s, v in enumerate(vals)])
    gain = A.loss_gain(runs, "headwise")
    assert gain.units == pytest.approx((0.1, 0.2, 0.1)) and gain.value == pytest.approx(0.4 / 3)
    half = T2 * np.std([0.1, 0.2, 0.1], ddof=1) / np.sqrt(3)
    assert gain.interval == pytest.approx((0.4 / 3 - half, 0.4 / 3 + half))
    diverged = runs.assign(final_val_loss=[nan, nan, nan, 1.9, 2.0, 2.0])
    gain = A.loss_gain(diverged, "headwise")  # used to raise KeyError: 'none'
    assert not np.isfinite(gain.value)
    assert A.paired_gains(diverged).columns.tolist() == ["headwise"]
    spec = yaml.safe_load(open("configs/figure/gated_attention/loss.yaml"))
    headwise = [c for c in spec["claims"] if c["id"] == "loss_gain_headwise"]
    judged = {c.id: c for c in claims.evaluate(headwise, {"loss_gain_headwise": gain})}
    assert judged["loss_gain_headwise"].verdict == "inconclusive"


def test_loss_measurements_pair_the_qk_norm_control_with_its_own_baseline():
    runs = pd.DataFrame([{"gate": g, "qk_norm": qk, "seed": s, "final_val_loss": v, "params": 1,
                          "status": "finished"}
                         for (g, qk), vals in {("none", None): [2.0, 2.2, 2.1],
                                               ("headwise", None): [1.9, 2.0, 2.0],
                                               ("none", True): [1.8, 1.8, 1.8],
                                               ("headwise", True): [1.8, 1.7, 1.9]}.items()
                         for s, v in enumerate(vals)])
    assert A.loss_variants(runs).unique().tolist() == ["none", "headwise", "none+qk_norm", "headwise+qk_norm"]
    m = A.loss_measurements(runs)
    assert sorted(m) == ["loss_gain_headwise", "loss_gain_headwise_qk_norm", "val_loss_baseline"]
    assert m["loss_gain_headwise"].units == pytest.approx((0.1, 0.2, 0.1))
    assert m["loss_gain_headwise_qk_norm"].units == pytest.approx((0.0, 0.1, -0.1))  # vs none+qk_norm
    assert m["val_loss_baseline"].value == pytest.approx(2.1)
    assert A.paired_gains(runs).columns.tolist() == ["headwise", "headwise+qk_norm"]
    summary = A.loss_summary(runs)
    assert summary.loc["none+qk_norm", "val_loss"] == pytest.approx(1.8) and summary.diverged.sum() == 0
    spec = yaml.safe_load(open("configs/figure/gated_attention/loss.yaml"))
    control = {c["id"]: c for c in spec["claims"]}["loss_gain_headwise_with_qk_norm"]
    assert control["kind"] == "control" and control["qualifies"] == "loss_gain_headwise"
    assert control["measured"] in m


def test_regime_search_record_is_readable_and_names_the_chosen_settings():
    sink, lr = A.regime_search("sink"), A.regime_search("lr")
    assert len(sink) and len(lr)
    chosen = sink[sink.chosen & (sink.gate == "none")]
    assert len(chosen) == 1 and chosen.seeds.iloc[0] >= 5 and chosen.min_seed.iloc[0] >= 0.3
    assert {"final_val_loss", "spikes"} <= set(lr.columns)
    massive = A.regime_search("massive")  # the baseline's max over median |hidden| per setting
    assert len(massive) >= 4 and set(massive.gate) == {"none"} and "max_over_median" in massive


def test_overhead_is_a_mean_over_rounds_of_median_ratios():
    turns = pd.DataFrame({"round": [0, 0, 0, 1, 1, 1, 2, 2, 2],
                          "none": [1.0] * 9,
                          "headwise": [1.01, 1.02, 9.0, 1.03, 1.04, 1.05, 1.0, 1.02, 1.01]})
    est = A.overhead_pct(turns, "headwise")
    assert est.units == pytest.approx((2.0, 4.0, 1.0)) and est.value == pytest.approx(7 / 3)
    assert est.n == 3 and "timing rounds" in est.method


def test_loss_analysis_survives_a_really_diverged_baseline(tmp_path):
    """A smoke run of the `loss` figure with a huge learning rate for the baseline only: it
    diverges, and the notebook's analysis gives a non-finite (inconclusive) gain, not a crash."""
    from replicate import claims, config as C, runs as R

    cfg = C.compose("gated_attention/loss", "cpu", "smoke",
                    ["figure.run.trainer.max_steps=6", "figure.run.trainer.val_check_interval=3"])
    rows = []
    for k, values in enumerate(C.points(cfg)):
        run_cfg = C.run_config(cfg, k)
        if values["module.model.gate"] == "none":  # both baselines (QK-norm off and on)
            run_cfg.run.module.optim.lr = 1e6
        swept = {key.rsplit(".", 1)[-1]: v for key, v in values.items()}
        rows.append({"point": k, **swept, **R.read_metrics(R.ensure(run_cfg, tmp_path))})
    runs = pd.DataFrame(rows)
    assert (runs[runs.gate == "none"].status == "diverged").all()
    from replicate.papers.gated_attention import measures

    m = measures.loss(runs, cfg)  # what the notebook calls; times real training steps of each variant
    gains = {k: v for k, v in m.items() if k.startswith("loss_gain")}
    assert sorted(gains) == ["loss_gain_elementwise", "loss_gain_headwise", "loss_gain_headwise_qk_norm"]
    assert not any(np.isfinite(e.value) for e in gains.values())
    assert m["overhead_pct_headwise"].n == cfg.figure.measure.timing_rounds
    assert np.isfinite(m["overhead_pct_headwise"].value)
    judged = {c.id: c for c in claims.evaluate(OmegaConf.to_container(cfg.figure.claims), m)}
    assert {v.verdict for k, v in judged.items() if k.startswith("loss_gain")} == {"inconclusive"}
    assert A.paired_gains(runs).isna().all().all()
    summary = A.loss_summary(runs)  # the notebook's table and prose survive too
    assert summary.loc["none", "diverged"] == 1 and not np.isfinite(summary.loc["none", "val_loss"])
    assert (A.shown(A.wide(runs.assign(variant=A.loss_variants(runs)), "final_val_loss",
                           columns="variant"))["none"] == "diverged").all()


# --------------------------------------------------------------------------- measures (one per figure)
from replicate.papers.gated_attention import measures  # noqa: E402


def figure_spec(figure: str):
    """The figure's config, a cfg with its ``measure`` block, and every key its claims read."""
    spec = yaml.safe_load(open(f"configs/figure/gated_attention/{figure}.yaml"))
    keys = {k for c in spec["claims"] for k in [c["measured"], *(c.get("requires") or {})]}
    measure = {}
    for part in spec["defaults"]:  # the measure blocks of the parts merged `@_here_`, then its own
        if isinstance(part, str) and part.startswith("/parts/"):
            measure |= yaml.safe_load(open(f"configs{part.split('@')[0]}.yaml")).get("measure", {})
    return spec, OmegaConf.create({"figure": {"measure": measure | spec.get("measure", {})}}), keys


def shuffled(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.sample(frac=1, random_state=0).reset_index(drop=True)


def log_t_interval(centre: float, sd_log: float, n: int = 3) -> tuple[float, float]:
    half = stats.t.ppf(0.975, n - 1) * sd_log / np.sqrt(n)
    return centre * np.exp(-half), centre * np.exp(half)


def test_measures_attention_sink_returns_every_claim_key_by_hand():
    from replicate import claims
    spec, cfg, keys = figure_spec("attention_sink")
    runs = shuffled(sink_runs({"none": [0.4, 0.5, 0.6], "headwise": [0.1, 0.1, 0.1],
                               "elementwise": [0.05, 0.05, 0.05], "value": [0.2, 0.3, 0.4],
                               "input_independent": [0.2, 0.2, 0.2]}))
    m = measures.attention_sink(runs, cfg)
    assert keys <= set(m)
    half = T2 * 0.1 / np.sqrt(3)  # baseline sd 0.1 over 3 seeds
    assert m["baseline_first_token_lower"].value == pytest.approx(0.5 - half)
    assert m["baseline_first_token_min_seed"].value == pytest.approx(0.4)
    # ratios of means; delta method on the log with constant denominators: sd_log = sd(num) / mean(num)
    for key, value, sd_log in [("sink_cut_headwise", 5.0, 0.2), ("sink_cut_elementwise", 10.0, 0.2),
                               ("value_over_headwise", 3.0, 1 / 3), ("input_independent_over_headwise", 2.0, 0.0)]:
        assert m[key].value == pytest.approx(value) and m[key].n == 3
        assert m[key].interval == pytest.approx(log_t_interval(value, sd_log)), key
    judged = {c.id: c.verdict for c in claims.evaluate(spec["claims"], m)}
    assert judged["sink_cut_headwise"] == "inconclusive"  # lower end 0.252 < 0.3: the precondition
    assert m == measures.attention_sink(runs.iloc[::-1].reset_index(drop=True), cfg)  # order-free


def test_measures_lr_stability_returns_every_claim_key_by_hand():
    from replicate import claims
    nan = float("nan")
    spec, cfg, keys = figure_spec("lr_stability")
    assert cfg.figure.measure.failed_above == 3.0
    cfg.figure.measure.high_lr = 3e-2  # the hand-built grid's second point
    grid = {4e-3: [2.0, 2.1, 2.2], 3e-2: [2.4, 2.5, 2.6], 6e-2: [nan, 3.5, 2.5], 0.12: [3.5, 3.5, 2.9],
            0.25: [3.6, 3.6, 3.6], 0.5: [4.0, 4.0, 4.0]}
    gated = {4e-3: [1.9, 2.0, 2.0], 3e-2: [2.3, 2.4, 2.5], 6e-2: [2.5, 2.6, 2.7], 0.12: [2.8, 2.9, 2.7],
             0.25: [3.2, 2.9, 3.1], 0.5: [3.5, 3.6, 3.4]}
    runs = shuffled(lr_runs({**{("none", lr): v for lr, v in grid.items()},
                             **{("headwise", lr): v for lr, v in gated.items()},
                             **{("elementwise", lr): [x + 0.05 for x in v] for lr, v in gated.items()}}))
    m = measures.lr_stability(runs, cfg)
    assert keys <= set(m)
    # every run trains at 3e-2 and fails at 0.5; 6e-2, 0.12 and 0.25 lie between
    assert (m["all_train_lr"].value, m["all_fail_lr"].value, m["lrs_between"].value) == (3e-2, 0.5, 3)
    assert (m["all_train_lr_none"].value, m["all_fail_lr_none"].value) == (3e-2, 0.25)
    assert m["baseline_failures"].value == 10  # 6e-2: seeds 0-1; 0.12: seeds 0-1; 0.25, 0.5: all three
    # failed lrs per seed: baseline 4, 4, 2; headwise 2, 1, 2 (0.25 seed 1 trained at 2.9)
    assert m["failed_lrs_baseline_minus_headwise"].units == (2.0, 3.0, 0.0)
    assert m["lrs_only_baseline_fails"].units == (2.0, 3.0, 0.0)
    # lr >= 3e-2 where both losses are finite (seed 0 at 6e-2 diverged: left out of that seed)
    per_seed = [np.mean([b - g for lr, (b, g) in ((lr, (grid[lr][s], gated[lr][s])) for lr in grid if lr >= 3e-2)
                         if np.isfinite(b)]) for s in range(3)]
    assert m["high_lr_gain_headwise"].units == pytest.approx(per_seed)
    assert m["high_lr_gain_elementwise"].units == pytest.approx([u - 0.05 for u in per_seed])
    assert m["spikes_baseline"].value == 1  # the diverged run's non-finite loss
    # best lr per seed: 4e-3 for every variant (the grid's edge)
    assert m["best_loss_gain"].units == pytest.approx((0.1, 0.1, 0.2))
    assert m["best_lr_on_grid_edge"].value == 9
    judged = {c.id: c for c in claims.evaluate(spec["claims"], m)}
    assert judged["better_best_loss"].kind == "control"
    assert judged["better_best_loss"].qualifies == "headwise_degrades_less"
    assert judged["better_best_loss"].verdict == "inconclusive"
    assert "best_lr_on_grid_edge" in judged["better_best_loss"].reason
    assert judged["gated_survives_where_baseline_fails"].measured == pytest.approx(5 / 3)
    assert judged["elementwise_survives_where_baseline_fails"].kind == "control"
    assert not any("lrs_between" in c.reason for c in judged.values())  # the window holds


def test_measures_massive_activations_returns_every_claim_key_by_hand():
    from replicate import claims
    nan = float("nan")
    spec, cfg, keys = figure_spec("massive_activations")
    gate_lr = cfg.figure.measure.gate_lr
    for c in spec["claims"]:  # the cut claims require the config's own "massive" ratio
        if c["measured"].startswith("max_activation_cut"):
            assert c["requires"] == {"baseline_max_over_median": f">= {cfg.figure.measure.massive_over_median}"}
    max_h = {("none", gate_lr): [4.0, 4.0, 4.0], ("none", 1.0): [100.0, 100.0, 100.0],
             ("headwise", gate_lr): [1.0, 1.0, 1.0], ("headwise", 1.0): [400.0, 100.0, 25.0],
             ("elementwise", gate_lr): [2.0, 2.0, 2.0], ("elementwise", 1.0): [nan, 50.0, 50.0]}
    score = {("headwise", gate_lr): [0.1, 0.2, 0.3], ("elementwise", gate_lr): [0.3, 0.3, 0.3]}
    runs = shuffled(pd.DataFrame([
        {"gate": g, "lr": lr, "seed": s, "status": "finished" if np.isfinite(v) else "diverged",
         "final_val_loss": 2.0 if np.isfinite(v) else nan,
         "probes": {"max_abs_hidden": [1.0, v], "median_abs_hidden": [1.0, 0.2],
                    "gate_mean": [score.get((g, lr), [0.9] * 3)[s]] * 2}
         if np.isfinite(v) else {}}
        for (g, lr), vals in max_h.items() for s, v in enumerate(vals)]))
    m = measures.massive_activations(runs, cfg)
    assert keys <= set(m)
    cut = m["max_activation_cut_headwise"]  # per seed sqrt(4 * 1/4) = 1, sqrt(4 * 1) = 2, sqrt(4 * 4) = 4
    assert cut.units == pytest.approx((1.0, 2.0, 4.0)) and cut.value == pytest.approx(2.0)
    assert cut.interval == pytest.approx(log_t_interval(2.0, np.log(2)))
    cut = m["max_activation_cut_elementwise"]  # lr 1.0 left out (a run diverged): 4 / 2 per seed
    assert cut.units == pytest.approx((2.0, 2.0, 2.0)) and cut.interval == pytest.approx((2.0, 2.0))
    g = m["gate_mean_headwise"]  # at gate_lr only (0.9 elsewhere)
    assert g.value == pytest.approx(0.2) and g.interval == pytest.approx((0.2 - T2 * 0.1 / np.sqrt(3),
                                                                          0.2 + T2 * 0.1 / np.sqrt(3)))
    assert m["gate_mean_elementwise"].value == pytest.approx(0.3)
    # baseline max over median 0.2: sqrt(20 * 500) = 100 per seed, massive enough
    assert m["baseline_max_over_median"].value == pytest.approx(100.0)
    judged = {c.id: c.verdict for c in claims.evaluate(spec["claims"], m)}
    assert judged["max_activation_cut_headwise"] != "inconclusive"
    # the same runs with a median of 2.0: max 2-50x the median, geometric mean 10: inconclusive
    for r in runs.itertuples():
        if isinstance(r.probes, dict) and r.probes:
            r.probes["median_abs_hidden"] = [1.0, 2.0]
    m = measures.massive_activations(runs, cfg)
    assert m["baseline_max_over_median"].value == pytest.approx(10.0)
    judged = {c.id: c for c in claims.evaluate(spec["claims"], m)}
    assert judged["max_activation_cut_headwise"].verdict == "inconclusive"
    assert "baseline_max_over_median" in judged["max_activation_cut_headwise"].reason
    assert judged["sparse_gate_headwise"].verdict != "inconclusive"  # gate claims need no massive activation


def test_measures_loss_returns_every_claim_key_by_hand():
    spec, cfg, keys = figure_spec("loss")
    runs = shuffled(pd.DataFrame([
        {"gate": g, "qk_norm": qk, "seed": s, "final_val_loss": v, "params": 1, "status": "finished"}
        for (g, qk), vals in {("none", None): [2.0, 2.2, 2.1], ("headwise", None): [1.9, 2.0, 2.0],
                              ("elementwise", None): [1.8, 2.0, 2.1], ("none", True): [1.8, 1.8, 1.8],
                              ("headwise", True): [1.8, 1.7, 1.9]}.items()
        for s, v in enumerate(vals)]))
    turns = pd.DataFrame({"round": [0, 0, 0, 1, 1, 1, 2, 2, 2], "none": [1.0] * 9,
                          "headwise": [1.01, 1.02, 9.0, 1.03, 1.04, 1.05, 1.0, 1.02, 1.01],
                          "elementwise": [1.1] * 9})
    m = measures.loss(runs, cfg, turns)
    assert keys <= set(m)
    assert m["loss_gain_headwise"].units == pytest.approx((0.1, 0.2, 0.1))
    assert m["loss_gain_elementwise"].units == pytest.approx((0.2, 0.2, 0.0))
    half = T2 * np.std([0.2, 0.2, 0.0], ddof=1) / np.sqrt(3)
    assert m["loss_gain_elementwise"].interval == pytest.approx((0.4 / 3 - half, 0.4 / 3 + half))
    assert m["loss_gain_headwise_qk_norm"].units == pytest.approx((0.0, 0.1, -0.1))  # vs none+qk_norm
    # per round: median of gated / baseline step time (1.02, 1.04, 1.01) -> 2 %, 4 %, 1 %
    assert m["overhead_pct_headwise"].units == pytest.approx((2.0, 4.0, 1.0))
    assert m["overhead_pct_elementwise"].value == pytest.approx(10.0)


# --------------------------------------------------------------------------- docs agree with the configs
WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
         "ten": 10}
STEPS = re.compile(r"\b(\d+(?:\.\d+)?)(k?)[ -]steps?\b(?!\s*warm)")
SEEDS = re.compile(r"\b(\d+|" + "|".join(WORDS) + r")\s+(?:paired\s+)?seeds\b", re.IGNORECASE)
NUMBER = r"\d+(?:\.\d+)?(?:e-?\d+)?"
LRS = re.compile(rf"\blrs?\s+((?:{NUMBER}(?:,\s*|\s+and\s+|\s+to\s+)?)+)")


def prose_numbers(text: str) -> dict[str, set[float]]:
    """Every number of steps, seeds and learning rate that ``text`` states ("600 steps", "20k steps",
    "five seeds", "lr 4e-3", "lrs 3e-2, 6e-2 and 0.12")."""
    steps = {float(n) * (1000 if k else 1) for n, k in STEPS.findall(text)}
    seeds = {float(WORDS.get(n.lower(), n)) for n in SEEDS.findall(text)}
    lrs = {float(x) for group in LRS.findall(text) for x in re.findall(NUMBER, group)}
    return {"steps": steps, "seeds": seeds, "lr": lrs}


def test_prose_numbers_reads_steps_seeds_and_lrs():
    found = prose_numbers("1 layer, 600 steps; 20k steps x 64; a 10-step warm-up; five seeds each, "
                          "5 paired seeds; lr 4e-3, then lrs 3e-2, 6e-2 and 0.12.")
    assert found == {"steps": {600.0, 20000.0}, "seeds": {5.0}, "lr": {4e-3, 3e-2, 6e-2, 0.12}}


def config_numbers() -> dict[str, set[float]]:
    """The steps, seed counts and learning rates (trained, or named by a `measure` key ending in
    `_lr`) of every Gated Attention figure at every scale, read from the composed configs."""
    from replicate import config as C
    out = {"steps": set(), "seeds": set(), "lr": set()}
    for figure in ("attention_sink", "massive_activations", "lr_stability", "loss"):
        for scale in ("smoke", "default", "full"):
            cfg = C.compose(f"gated_attention/{figure}", hardware="cpu", scale=scale)
            runs = C.run_configs(cfg)
            out["steps"] |= {float(r.run.trainer.max_steps) for r in runs}
            out["lr"] |= {float(r.run.module.optim.lr) for r in runs}
            out["lr"] |= {float(v) for k, v in (cfg.figure.measure or {}).items() if k.endswith("_lr")}
            out["seeds"] |= {float(len(grid["seed"])) for grid in C.grids(cfg.figure) if "seed" in grid}
    return out


def test_docs_and_notebook_prose_state_no_steps_seeds_or_lr_the_configs_lack():
    allowed = config_numbers()
    texts = {"docs/papers/gated_attention.md": open("docs/papers/gated_attention.md").read()}
    for figure in ("attention_sink", "massive_activations", "lr_stability", "loss"):
        nb = json.load(open(f"notebooks/gated_attention/{figure}.ipynb"))
        texts[f"{figure}.ipynb"] = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
        texts[f"{figure}.yaml regime"] = yaml.safe_load(open(f"configs/figure/gated_attention/{figure}.yaml"))["regime"]
    wrong = [f"{where}: {kind} {value:g}" for where, text in texts.items()
             for kind, values in prose_numbers(text).items() for value in sorted(values)
             if not any(np.isclose(value, a) for a in allowed[kind])]
    assert not wrong, "numbers the configs do not have: " + "; ".join(wrong)


def test_timed_turns_rotate_the_variant_order(monkeypatch):
    """Each turn runs every variant once, the order rotated by one each turn; one row per turn."""
    calls = []
    monkeypatch.setattr(A, "_training_step", lambda rc: (lambda g=rc: calls.append(g) or 0.01))
    monkeypatch.setattr("replicate.config.run_config", lambda cfg, point: ["none", "headwise", "elementwise"][point])
    runs = pd.DataFrame({"gate": ["none", "headwise", "elementwise"], "point": [0, 1, 2]})
    cfg = OmegaConf.create({"figure": {"measure": {"timing_rounds": 2, "timing_steps": 3}}})
    turns = A.step_turns(runs, cfg, warmup=1)
    assert list(turns.columns) == ["round", "none", "headwise", "elementwise"] and len(turns) == 6
    assert turns["round"].tolist() == [0, 0, 0, 1, 1, 1]
    timed = calls[3:]  # after one warm-up turn
    assert timed[:9] == ["none", "headwise", "elementwise", "headwise", "elementwise", "none",
                         "elementwise", "none", "headwise"]
