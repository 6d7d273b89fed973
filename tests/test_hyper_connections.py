"""Hyper-Connections family: each variant's equations on hand-computed cases, the block's gradient,
the residual variant against the shared LM, determinism, the figures' measures on hand-built run
tables, and one smoke training run (CPU, seconds)."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from omegaconf import OmegaConf

from replicate import config as C
from replicate import runs
from replicate.nn.transformer import CausalLM, LMConfig
from replicate.papers.hyper_connections import measures, probes
from replicate.papers.hyper_connections.connections import (
    HyperConnection, KroneckerConnection, PermutationConnection, SinkhornConnection, SpectralConnection,
    kronecker, kronecker_mixture, make_connection, permutation_matrices, permutation_mixture, prime_factors,
    sinkhorn_knopp, spectral_sphere)
from replicate.papers.hyper_connections.model import ConnectionConfig, HyperConnectedLM, connection_parameters, recording
from replicate.papers.hyper_connections.module import HyperConnectionsLM

LM = LMConfig(n_layer=2, d_model=16, n_head=2, max_len=16)
VARIANTS = [("hc", 4), ("mhc", 4), ("mhc_lite", 4), ("kromhc", 4), ("shc", 4)]


def lm(variant, streams=4, **kw):
    torch.manual_seed(0)
    return HyperConnectedLM(LM, ConnectionConfig(variant=variant, streams=streams, **kw))


# --------------------------------------------------------------------------- equations by hand
def test_sinkhorn_knopp_on_a_3x3_matrix_matches_a_hand_computation():
    logits = torch.log(torch.tensor([[1.0, 2.0, 1.0], [1.0, 1.0, 2.0], [4.0, 1.0, 1.0]], dtype=torch.float64))
    # one iteration: columns of exp(logits) sum to (6, 4, 4); divide, then rows sum to 1
    m = torch.tensor([[1 / 6, 2 / 4, 1 / 4], [1 / 6, 1 / 4, 2 / 4], [4 / 6, 1 / 4, 1 / 4]], dtype=torch.float64)
    m = m / m.sum(1, keepdim=True)
    assert torch.allclose(sinkhorn_knopp(logits, 1), m, atol=1e-12)
    one = sinkhorn_knopp(logits, 1)
    assert torch.allclose(one.sum(1), torch.ones(3, dtype=torch.float64))  # rows exact after T_r
    assert (one.sum(0) - 1).abs().max() > 1e-2  # columns not yet
    many = sinkhorn_knopp(logits, 200)
    assert torch.allclose(many.sum(0), torch.ones(3, dtype=torch.float64), atol=1e-10)
    errors = [probes.doubly_stochastic_error(sinkhorn_knopp(logits, t)) for t in (1, 2, 5, 20)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] / 100


def test_sinkhorn_needs_one_iteration():
    with pytest.raises(ValueError, match="sinkhorn_iters=0"):
        sinkhorn_knopp(torch.zeros(2, 2), 0)


def test_a_permutation_mixture_is_the_weighted_sum_of_permutations_and_doubly_stochastic():
    perms = permutation_matrices(3)
    assert perms.shape == (6, 3, 3) and torch.equal(perms[0], torch.eye(3))
    logits = torch.log(torch.tensor([0.5, 0.25, 0.25, 0.0, 0.0, 0.0]) + 1e-30)
    expected = 0.5 * perms[0] + 0.25 * perms[1] + 0.25 * perms[2]
    got = permutation_mixture(logits, perms)
    assert torch.allclose(got, expected, atol=1e-6)
    # permutations (0,2,1) and (1,0,2): [[.75, .25, 0], [.25, .5, .25], [0, .25, .75]]
    assert torch.allclose(got, torch.tensor([[.75, .25, 0], [.25, .5, .25], [0, .25, .75]]), atol=1e-6)
    random = permutation_mixture(torch.randn(5, 24), permutation_matrices(4))
    assert probes.doubly_stochastic_error(random) < 1e-6 and (random >= 0).all()


def test_a_kronecker_product_of_doubly_stochastic_factors_has_unit_row_and_column_sums():
    a = torch.tensor([[0.7, 0.3], [0.3, 0.7]])
    b = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
    k = kronecker(a, b)
    assert torch.allclose(k, torch.kron(a, b))
    assert torch.allclose(k[0], torch.tensor([0.63, 0.07, 0.27, 0.03]))  # 0.7 * (0.9, 0.1), 0.3 * (0.9, 0.1)
    assert torch.allclose(k.sum(0), torch.ones(4)) and torch.allclose(k.sum(1), torch.ones(4))
    # from logits: softmax([0, log(3/7)]) -> p = 0.7 for the identity
    logits = torch.tensor([0.0, math.log(3 / 7), 0.0, math.log(1 / 9)])
    perms = [permutation_matrices(2), permutation_matrices(2)]
    assert torch.allclose(kronecker_mixture(logits, perms), k, atol=1e-6)
    assert prime_factors(4) == [2, 2] and prime_factors(6) == [2, 3] and prime_factors(8) == [2, 2, 2]


def test_the_spectral_sphere_gives_spectral_norm_one_and_keeps_negative_entries():
    m = torch.tensor([[3.0, 0.0], [0.0, -1.5]])  # singular values 3, 1.5
    got = spectral_sphere(m)
    assert torch.allclose(got, m / 3) and got[1, 1] < 0
    batch = spectral_sphere(torch.randn(7, 4, 4))
    assert torch.allclose(torch.linalg.matrix_norm(batch, ord=2), torch.ones(7), atol=1e-5)


def test_hc_static_starts_as_the_pre_norm_residual_with_streams():
    hc = HyperConnection(3, 8, layer_index=4, dynamic=False)  # k = 4 -> stream 4 mod 3 = 1
    x = torch.randn(2, 3, 8)
    pre, post, res = hc.mappings(x)
    assert torch.equal(pre, torch.tensor([0.0, 1.0, 0.0])) and torch.equal(post, torch.ones(3))
    assert torch.equal(res, torch.eye(3))
    out = hc(x, lambda u: 2 * u)  # x_i + 1 * F(x_1)
    assert torch.allclose(out, x + 2 * x[:, 1:2, :])


def test_hc_dynamic_adds_tanh_scaled_input_dependent_terms():
    hc = HyperConnection(2, 4, layer_index=0, dynamic=True)
    with torch.no_grad():
        hc.w_alpha.weight.fill_(1.0)
        hc.norm.weight.fill_(1.0)
    x = torch.ones(1, 2, 4)  # RMS-normalised rows are all ones: h W = 4 per output
    pre, post, res = hc.mappings(x)
    assert torch.allclose(pre, torch.tensor([[1.0, 0.0]]) + 0.01 * math.tanh(4.0))
    assert torch.allclose(res, torch.eye(2) + 0.01 * math.tanh(4.0))
    assert torch.allclose(post, torch.ones(1, 2))  # W_beta still 0


@pytest.mark.parametrize("cls", [SinkhornConnection, PermutationConnection, KroneckerConnection])
def test_polytope_variants_start_near_identity_with_non_negative_pre_and_post(cls):
    conn = cls(4, 8, layer_index=1)
    with torch.no_grad():
        pre, post, res = conn.mappings(torch.randn(3, 4, 8))
    assert probes.identity_distance(res) < 0.02 and probes.doubly_stochastic_error(res) < 1e-5
    assert torch.allclose(pre[0], torch.sigmoid(torch.tensor([-1.0, 1.0, -1.0, -1.0])))
    assert torch.allclose(post[0], 2 * torch.sigmoid(torch.tensor([-1.0, 1.0, -1.0, -1.0])))


def test_shc_starts_at_the_identity():
    with torch.no_grad():
        _, _, res = SpectralConnection(4, 8, layer_index=0).mappings(torch.randn(3, 4, 8))
    assert torch.allclose(res, torch.eye(4).expand(3, 4, 4))


def test_bad_connection_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="one of"):
        make_connection("nope", 4, 8, 0)
    with pytest.raises(ValueError, match="residual variant has one stream"):
        make_connection("residual", 4, 8, 0)
    with pytest.raises(ValueError, match="at least 2 streams"):
        make_connection("mhc", 1, 8, 0)
    with pytest.raises(TypeError, match="unknown connection keys"):
        ConnectionConfig.from_dict({"variant": "mhc", "stream": 4})


# --------------------------------------------------------------------------- the LM
def test_the_residual_variant_is_the_shared_causal_lm():
    torch.manual_seed(1)
    plain = CausalLM(LM)
    hyper = HyperConnectedLM(LM, ConnectionConfig(variant="residual", streams=1))
    assert set(hyper.state_dict()) == set(plain.state_dict())
    hyper.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 256, (2, 16))
    assert torch.equal(hyper(idx), plain(idx))


@pytest.mark.parametrize("variant,streams", VARIANTS)
def test_every_variant_trains_and_every_mapping_gets_a_gradient(variant, streams):
    model = lm(variant, streams)
    idx = torch.randint(0, 256, (2, 16))
    loss = torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
    loss.backward()
    for name, p in model.connections.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.connections.parameters())


def test_the_block_gradient_matches_finite_differences():
    conn = SinkhornConnection(3, 4, layer_index=0, sinkhorn_iters=5).double()
    with torch.no_grad():
        conn.phi.weight.normal_(0, 0.5)
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: conn(s, lambda u: torch.tanh(u @ weight)), (x,))


def test_same_seed_same_model_same_loss():
    idx = torch.randint(0, 256, (2, 16))
    for variant, streams in VARIANTS:
        a, b = lm(variant, streams), lm(variant, streams)
        assert torch.equal(a(idx), b(idx)), variant


def test_recording_keeps_every_layers_mixing_matrix_and_composite_gain_is_one_at_init():
    model = lm("mhc_lite")
    with recording(model) as conns:
        model(torch.randint(0, 256, (2, 16)))
        res = [c.last["res"] for c in conns]
    assert len(res) == 2 * LM.n_layer and res[0].shape == (2, 16, 4, 4)
    final = probes.composite(res)[-1]
    assert probes.amax_gain(final) == pytest.approx((1.0, 1.0), abs=1e-5)
    assert all(not c.last for c in model.connections)  # cleared on exit


def test_composite_and_gains_on_hand_matrices():
    h1 = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    h2 = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    p = probes.composite([h1, h2])
    assert torch.equal(p[1], h2 @ h1)  # [[2, 1], [0, 1]]
    assert probes.amax_gain(p[1]) == (3.0, 2.0)  # rows 3, 1; columns 2, 2
    assert probes.negative_share(torch.tensor([[1.0, -1.0], [0.0, -2.0]])) == 0.5
    assert probes.identity_distance(torch.eye(3)) == 0.0


def test_parameter_counts_follow_the_papers_complexity():
    counts = {v: connection_parameters(lm(v))["residual_mixing"] for v in ("mhc", "mhc_lite", "kromhc")}
    layers, nc = 2 * LM.n_layer, 4 * LM.d_model
    assert counts["mhc"] == layers * (nc * 16 + 16)       # n^2 coefficients
    assert counts["mhc_lite"] == layers * (nc * 24 + 24)  # n! = 24
    assert counts["kromhc"] == layers * (nc * 4 + 4)      # 2! + 2! for 4 = 2 x 2


# --------------------------------------------------------------------------- measures (hand-built runs)
CFG = OmegaConf.create({"figure": {"measure": {"final_vals": 1}}})


def as_runs(rows: pd.DataFrame) -> pd.DataFrame:
    """``ctx.runs()`` rows whose probes give back ``rows`` through measures.run_table."""
    out = []
    for r in rows.itertuples():
        layers = {"composite_gain_forward": [1.0, r.gain], "composite_gain_backward": [1.0, r.gain],
                  "composite_ds_error": [0.0, r.composite_ds_error],
                  "composite_spectral_norm": [1.0, r.composite_spectral_norm],
                  "layer_identity_distance": [r.identity_distance] * 2, "layer_negative_share": [r.negative_share] * 2}
        probes_ = {"variant": r.variant, "layers": layers, "parameters": {"residual_mixing": r.mixing_params},
                   "history": r.history, **({"sinkhorn": r.sinkhorn} if r.sinkhorn else {})}
        out.append({"seed": r.seed, "status": r.status, "wall_seconds": 1.0, "val": r.val, "probes": probes_})
    return pd.DataFrame(out)


def hand_runs():
    """Two seeds of every variant with round numbers, and one diverged HC run."""
    rows = []
    losses = {"residual": (2.0, 2.2), "hc": (1.9, 2.0), "mhc": (1.8, 2.0), "mhc_lite": (1.7, 1.9),
              "kromhc": (1.8, 2.1), "shc": (1.6, 1.8)}
    gains = {"residual": 1.0, "hc": 3.0, "mhc": 1.2, "mhc_lite": 1.0, "kromhc": 1.0 + 1e-7, "shc": 1.5}
    for variant, pair in losses.items():
        for seed, final in enumerate(pair):
            rows.append({
                "variant": variant, "seed": seed, "status": "finished", "final_loss": final,
                "gain": gains[variant] + seed, "composite_ds_error": 0.01 if variant == "mhc" else 1e-7,
                "composite_spectral_norm": 0.99 if variant == "shc" else 1.0,
                "identity_distance": {"shc": 0.4 + 0.2 * seed, "mhc": 0.1 + 0.1 * seed}.get(variant, 0.05),
                "negative_share": {"shc": 0.25 + 0.25 * seed, "hc": 0.1}.get(variant, 0.0),
                "mixing_params": {"mhc_lite": 240, "kromhc": 40}.get(variant, 160),
                "val": [{"step": 10, "val_loss": final + 1.0}, {"step": 20, "val_loss": final}],
                "history": [{"gain_forward": 1.0, "gain_backward": 1.0},
                            {"gain_forward": 2.0 + seed, "gain_backward": 1.5}],
                "sinkhorn": {"iters": [1, 20], "layer": [[0.5, 0.4], [0.001, 0.002 * (seed + 1)]],
                             "composite": [[0.5, 0.9], [0.001, 0.004 * (seed + 1)]]} if variant == "mhc" else None,
            })
    diverged = {**rows[2], "seed": 2, "status": "diverged", "final_loss": float("nan"),
                "val": [{"step": 10, "val_loss": float("nan")}]}  # hc seed 2
    return as_runs(pd.DataFrame(rows + [diverged]))


def test_stability_measures_on_a_hand_built_run_table():
    got = measures.stability(hand_runs(), CFG)
    assert got["gain_hc"].value == pytest.approx(3.5) and got["gain_hc"].n == 2  # 3 and 4; diverged dropped
    assert got["gain_mhc"].value == pytest.approx(1.7)
    assert got["gain_growth_hc"].value == pytest.approx(2.5)  # (2 / 1 + 3 / 1) / 2
    assert got["exact_gain_error"].value == pytest.approx(1.0)  # mhc_lite seed 1 has gain 2 by hand
    assert got["shc_spectral_norm"].value == pytest.approx(0.99) and got["runs_finished"] == 12


def test_loss_measures_on_a_hand_built_run_table():
    times = pd.DataFrame({"residual": [1.0, 1.0, 1.0], "hc": [1.0, 1.0, 1.0], "mhc": [2.0, 2.0, 2.0],
                          "mhc_lite": [1.0, 1.0, 1.0], "kromhc": [0.5, 0.5, 0.5], "shc": [2.0, 4.0, 2.0]})
    got = measures.loss(hand_runs(), CFG, times)
    assert got["loss_gain_hc"].value == pytest.approx(0.15)  # (0.1 + 0.2) / 2
    assert got["loss_gain_shc"].value == pytest.approx(0.4) and got["loss_gain_shc"].n == 2
    assert got["loss_gap_mhc_lite_vs_mhc"].value == pytest.approx(0.1)
    assert got["loss_gap_kromhc_vs_mhc"].value == pytest.approx(-0.05)
    assert got["speedup_mhc_lite_vs_mhc"].value == pytest.approx(2.0)
    assert got["speedup_shc_vs_mhc"].value == pytest.approx(0.75)
    assert got["mixing_params_kromhc_over_mhc_lite"].value == pytest.approx(40 / 240)
    # equal time: HC as fast as the baseline -> its final loss; mHC half as fast -> step 10 of 20,
    # loss final + 1; KromHC twice as fast -> past its last validation, its final loss
    assert got["loss_gain_equal_time_hc"].value == pytest.approx(0.15)
    assert got["loss_gain_equal_time_mhc"].value == pytest.approx(0.2 - 1.0)
    assert got["loss_gain_equal_time_kromhc"].value == pytest.approx(0.15)
    pilot = measures.loss(hand_runs(), CFG)  # the seeds checkpoint: no step times measured
    assert not {k for k in pilot if k.startswith(("speedup", "loss_gain_equal_time"))}
    assert all(pilot[k].value == got[k].value for k in pilot if k.startswith("loss_"))


def test_loss_at_step_interpolates_between_validations():
    val = [{"step": 10, "val_loss": 3.0}, {"step": 20, "val_loss": 2.0}]
    assert measures.loss_at_step(val, 15) == 2.5 and measures.loss_at_step(val, 5) == 3.0


def test_exactness_measures_on_a_hand_built_run_table():
    got = measures.exactness(hand_runs(), CFG, np.array([0.1, 0.3]))
    assert got["sk_composite_error"].value == pytest.approx(0.006)  # 0.004, 0.008 at the last iteration
    assert got["sk_layer_error"].value == pytest.approx(0.003)  # worst layers 0.002, 0.004
    assert got["exact_composite_error"].value == pytest.approx(1e-7)
    assert got["sk_error_random_logits"].value == pytest.approx(0.2)


def test_identity_measures_on_a_hand_built_run_table():
    got = measures.identity(hand_runs(), CFG)
    assert got["identity_distance_shc"].value == pytest.approx(0.5)
    assert got["identity_ratio_shc_over_mhc"].value == pytest.approx(0.5 / 0.15)
    assert got["negative_share_shc"].value == pytest.approx(0.375)
    assert got["negative_share_polytope"].value == 0.0


def test_gate_and_streams_measures_on_a_hand_built_run_table():
    """Final losses by hand: (residual, none) 2.0/2.2, (residual, gate) 1.9/2.0, (mhc, none) 1.8/2.0,
    (mhc, gate) 1.75/1.9 over seeds 0/1; a diverged gated mHC seed 2 drops seed 2 everywhere."""
    base = hand_runs().set_index("seed", drop=False)
    losses = {("residual", "none"): (2.0, 2.2, 2.1), ("residual", "headwise"): (1.9, 2.0, 2.0),
              ("mhc", "none"): (1.8, 2.0, 1.9), ("mhc", "headwise"): (1.75, 1.9, float("nan"))}
    rows = []
    for (variant, gate), finals in losses.items():
        for seed, final in enumerate(finals):
            probes_ = {**base[base.probes.map(lambda p: p["variant"]) == variant].iloc[0]["probes"]}
            rows.append({"seed": seed, "attention_gate": gate, "status": "diverged" if final != final else "finished",
                         "wall_seconds": 1.0, "val": [{"step": 20, "val_loss": final}], "probes": probes_})
    got = measures.gate_and_streams(pd.DataFrame(rows), CFG)
    assert got["seeds_complete"] == 2
    assert got["gate_gain_residual"].value == pytest.approx(0.15)  # 0.1, 0.2
    assert got["gate_gain_mhc"].value == pytest.approx(0.075)  # 0.05, 0.1
    assert got["streams_gain_gated"].value == pytest.approx(0.125)  # 0.15, 0.1
    assert got["streams_gain_plain"].value == pytest.approx(0.2)
    assert got["gate_streams_interaction"].value == pytest.approx(0.075) and got["gate_streams_interaction"].n == 2
    assert list(got["gate_streams_interaction"].units) == pytest.approx([0.05, 0.1])


def test_the_attention_gate_is_gated_attentions_headwise_gate_in_every_attention_layer():
    from replicate.papers.gated_attention.model import HeadwiseGate

    cfg = LMConfig(vocab_size=11, n_layer=2, d_model=16, n_head=2, max_len=8)
    torch.manual_seed(0)
    plain = HyperConnectedLM(cfg, ConnectionConfig(variant="mhc", streams=2))
    torch.manual_seed(0)
    gated = HyperConnectedLM(cfg, ConnectionConfig(variant="mhc", streams=2), attention_gate="headwise")
    assert all(isinstance(b.attn.gate, HeadwiseGate) for b in gated.blocks)
    assert all(b.attn.gate is None for b in plain.blocks)
    for block in gated.blocks:  # a gate of sigmoid(0) = 1/2 halves every attention output
        nn.init.zeros_(block.attn.gate.proj.weight)
    shared = {k: v for k, v in gated.state_dict().items() if ".attn.gate." not in k}
    assert shared.keys() == plain.state_dict().keys()
    plain.load_state_dict(shared)
    for block in plain.blocks:
        block.attn.o_proj.weight.data.mul_(0.5)  # the same halving, on the output projection
    idx = torch.randint(0, 11, (2, 8))
    torch.testing.assert_close(gated(idx), plain(idx))
    with pytest.raises(ValueError, match="attention_gate='value'"):
        HyperConnectedLM(cfg, ConnectionConfig(variant="mhc", streams=2), attention_gate="value")


def test_sinkhorn_on_random_logits_shrinks_with_iterations_and_grows_with_scale():
    few = measures.sinkhorn_on_random_logits(4, layers=8, scale=3.0, iters=2, draws=64)
    many = measures.sinkhorn_on_random_logits(4, layers=8, scale=3.0, iters=20, draws=64)
    mild = measures.sinkhorn_on_random_logits(4, layers=8, scale=0.1, iters=20, draws=64)
    assert few.shape == (64,) and few.mean() > many.mean() > mild.mean()


def test_step_times_has_one_row_per_round_and_one_column_per_module():
    batch = (torch.randint(0, 256, (2, 8)), torch.randint(0, 256, (2, 8)))
    model = {"vocab_size": 257, "n_layer": 1, "d_model": 16, "n_head": 2, "max_len": 8}
    modules = {v: HyperConnectionsLM(model, {"variant": v, "streams": n}) for v, n in (("residual", 1), ("mhc", 2))}
    times = measures.step_times(modules, batch, steps=2, rounds=3)
    assert list(times.columns) == ["residual", "mhc"] and len(times) == 3 and (times > 0).all().all()


# --------------------------------------------------------------------------- one smoke run through the pipeline
def test_smoke_run_trains_and_records_probes(tmp_path):
    cfg = C.compose("hyper_connections/stability", hardware="cpu", scale="smoke")
    points = C.points(cfg)
    k = next(i for i, p in enumerate(points) if p.get("module.connection.variant") == "mhc")
    metrics = json.loads((runs.ensure(C.run_config(cfg, k), tmp_path) / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["train"] and metrics["val"]
    probes_ = metrics["probes"]
    assert probes_["variant"] == "mhc" and len(probes_["layers"]["composite_gain_forward"]) == 2 * cfg.figure.run.module.model.n_layer
    assert probes_["history"] and probes_["sinkhorn"]["iters"][-1] == 20
    assert probes_["layers"]["composite_gain_forward"][-1] == pytest.approx(1.0, abs=1e-3)  # SK rows sum to 1


def test_run_table_reads_the_probes_of_each_run():
    layers = {"composite_gain_forward": [1.0, 3.0], "composite_gain_backward": [1.0, 2.5],
              "composite_ds_error": [0.0, 0.2], "composite_spectral_norm": [1.0, 2.0],
              "layer_identity_distance": [0.1, 0.3], "layer_negative_share": [0.0, 0.5]}
    probes_ = {"variant": "hc", "layers": layers, "parameters": {"residual_mixing": 32}, "history": []}
    runs_ = pd.DataFrame([{"seed": 3, "status": "finished", "wall_seconds": 9.0, "probes": probes_,
                           "val": [{"step": 1, "val_loss": 3.0}, {"step": 2, "val_loss": 2.0}, {"step": 3, "val_loss": 1.0}]}])
    row = measures.run_table(runs_, final_vals=2).iloc[0]
    assert row.variant == "hc" and row.seed == 3 and row.final_loss == 1.5 and row.gain == 3.0
    assert row.identity_distance == pytest.approx(0.2) and row.negative_share == 0.25 and row.mixing_params == 32
    assert row.composite_ds_error == 0.2 and row.sinkhorn is None
    long = measures.by_layer(measures.run_table(runs_, 2), ["layer_identity_distance"])
    assert list(long.layer) == [1, 2] and list(long.variant) == ["HC", "HC"]
