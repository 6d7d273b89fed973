"""Mixture-of-Recursions (Bae et al. 2025): sharing, routing, causality, FLOPs, configs."""

import copy
import math

import pytest
import torch
from omegaconf import OmegaConf

from replicate import config as C
from replicate.nn.transformer import BOS, CausalLM, LMConfig
from replicate.papers.mixture_of_recursions.decode import generate, teacher_forced_logits
from replicate.papers.mixture_of_recursions.flops import (active_counts, block_forward_flops,
                                                          forward_flops, train_flops_per_step)
from replicate.papers.mixture_of_recursions.model import (MoRConfig, RecursiveLM, Routing, aux_bce,
                                                          balancing_loss, block_forward_kv,
                                                          lm_config_for, topk_mask)

LM = dict(n_layer=8, d_model=32, n_head=2, max_len=16)


def model(variant, n_rec=2, **kw):
    torch.manual_seed(0)
    return RecursiveLM(LMConfig(**LM), MoRConfig(variant=variant, n_rec=n_rec, **kw)).eval()


def tokens(B=2, T=12, seed=1):
    x = torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))
    x[:, 0] = BOS
    return x


# --------------------------------------------------------------------------- parameter sharing


@pytest.mark.parametrize("n_rec,middle", [(2, 3), (3, 2)])
def test_middle_cycle_keeps_only_unique_blocks(n_rec, middle):
    m = model("recursive", n_rec)
    assert len(m.base.blocks) == middle + 2
    assert [r for r, _ in m.layer_schedule()].count(-1) == 2
    assert len(m.layer_schedule()) == LM["n_layer"]  # every block application counted once


def test_shared_weights_are_one_tensor_whose_gradient_sums_over_recursions():
    """Unrolling the recursions into independent copies gives per-copy gradients that add up
    to the tied model's gradient."""
    m, x = model("recursive", 2).train(), tokens()
    m(x).logsumexp(-1).mean().backward()
    tied = m.middle[0].mlp.up.weight.grad.clone()

    untied = copy.deepcopy(m)
    untied.zero_grad()
    copies = [copy.deepcopy(untied.middle) for _ in range(2)]
    h = untied.first(untied.base.embed(x))
    for group in copies:
        for block in group:
            h = block(h)
    untied.base.lm_head(untied.base.norm_f(untied.last(h))).logsumexp(-1).mean().backward()
    summed = sum(group[0].mlp.up.weight.grad for group in copies)
    torch.testing.assert_close(tied, summed, rtol=1e-4, atol=1e-7)
    assert m.middle[0].mlp.up.weight.data_ptr() == m.base.blocks[1].mlp.up.weight.data_ptr()


def test_vanilla_equals_the_shared_causal_lm():
    m, x = model("vanilla"), tokens()
    ref = CausalLM(LMConfig(**LM)).eval()
    ref.load_state_dict(m.base.state_dict())
    torch.testing.assert_close(m(x), ref(x))


def test_middle_cycle_layout_that_does_not_divide_is_refused():
    with pytest.raises(ValueError, match="divisible by n_rec"):
        lm_config_for({**LM, "n_layer": 7, "variant": "recursive", "n_rec": 2})


# --------------------------------------------------------------------------- routing


def test_topk_mask_keeps_the_best_allowed_tokens():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.7, 0.8]])
    allowed = torch.tensor([[True, True, False, True, False]])  # 0.5 and 0.8 were dropped before
    assert topk_mask(scores, allowed, 2).tolist() == [[True, False, False, True, False]]
    with pytest.raises(ValueError):
        topk_mask(scores, allowed, 4)


def test_expert_choice_filters_hierarchically_with_capacities():
    m, x = model("mor_ec", 3), tokens(T=12)
    _, routing = m(x, return_routing=True)
    counts = [a.sum(1).tolist() for a in routing.active]
    assert counts == [[12, 12], [8, 8], [4, 4]]  # (N_r - r) / N_r of T = 12
    for prev, cur in zip(routing.active, routing.active[1:]):
        assert not (cur & ~prev).any()  # a token dropped once never comes back
    assert routing.depth().sum(1).tolist() == [24, 24]


def test_expert_choice_update_is_h_plus_weighted_block_output():
    """Selected tokens get h + w f(h) with f's output including the residual; others keep h."""
    m = model("mor_ec", 2)
    h = torch.randn(1, 6, 32)
    active = torch.tensor([[True, False, True, False, False, True]])
    weight = torch.rand(1, 6)
    out = m._step_gathered(h, active, weight)
    sel = h[:, active[0]]
    f = sel
    for block in m.middle:
        f = block(f, positions=active[0].nonzero()[:, 0])
    torch.testing.assert_close(out[:, active[0]], sel + weight[:, active[0], None] * f)
    torch.testing.assert_close(out[:, ~active[0]], h[:, ~active[0]])


def test_fixed_gate_updates_every_token_by_h_plus_w_f_h():
    """recursive_gated: every token, every recursion, h <- h + 0.05 f(h). With the middle blocks'
    output projections zeroed, f(h) = h, so N_r recursions scale h by exactly 1.05^N_r."""
    m, x = model("recursive_gated", 2), tokens()
    assert m.mor.fixed_gate() == 0.05 and not hasattr(m, "routers")
    for block in m.middle:
        torch.nn.init.zeros_(block.attn.o_proj.weight)
        torch.nn.init.zeros_(block.mlp.down.weight)
    h, routing = m.first(m.base.embed(x)), Routing()
    torch.testing.assert_close(m._recursions(h, "topk", routing), 1.05 ** 2 * h)
    assert routing.depth().eq(2).all()  # no token dropped


def test_fixed_gate_matches_an_unrolled_gated_recursion():
    m, x = model("recursive_gated", 3), tokens()
    h = m.first(m.base.embed(x))
    for _ in range(3):
        f = h
        for block in m.middle:
            f = block(f)
        h = h + 0.05 * f
    expected = m.base.lm_head(m.base.norm_f(m.last(h)))
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m(x, rule="threshold"), expected, rtol=1e-5, atol=1e-5)


def test_gathered_and_masked_paths_agree():
    m = model("mor_ec", 2)
    h = torch.randn(2, 8, 32)
    active = topk_mask(torch.rand(2, 8), torch.ones(2, 8, dtype=torch.bool), 4)
    weight = torch.rand(2, 8)
    masked, _ = m._step_masked(h, torch.arange(8), active, weight, None)
    torch.testing.assert_close(m._step_gathered(h, active, weight), masked, rtol=1e-5, atol=1e-5)


def test_block_forward_kv_matches_block():
    m, h = model("vanilla"), torch.randn(2, 7, 32)
    block = m.base.blocks[1]
    out, (k, v) = block_forward_kv(block, h, torch.arange(7), None, None)
    torch.testing.assert_close(out, block(h), rtol=1e-5, atol=1e-6)
    assert k.shape == v.shape == (2, 2, 7, 16)


def test_aux_bce_and_balancing_by_hand():
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    scored = torch.tensor([[True, True, False]])
    selected = torch.tensor([[False, True, False]])
    expected = (torch.log1p(torch.exp(torch.tensor(0.0))) + torch.log1p(torch.exp(torch.tensor(-2.0)))) / 2
    torch.testing.assert_close(aux_bce(logits, scored, selected), expected)
    # two depths, half the tokens each, probabilities one-hot on the chosen depth: N sum f P = 2 (0.5 0.5 + 0.5 0.5) = 1
    tc = torch.tensor([[[9.0, -9.0], [-9.0, 9.0]]])
    torch.testing.assert_close(balancing_loss(tc), torch.tensor(1.0), atol=1e-6, rtol=0)


def test_token_choice_depth_matches_its_router():
    m, x = model("mor_tc", 3), tokens()
    _, routing = m(x, return_routing=True)
    expected = routing.tc_logits.argmax(-1) + 1
    assert torch.equal(routing.depth(), expected)


@pytest.mark.parametrize("mode", ["detached", "separate"])
def test_detached_aux_loss_sends_no_gradient_into_the_blocks(mode):
    """aux_mode detached / separate: the BCE term trains only the router it is computed on;
    the shared block group, the first block and the embeddings get no gradient from it
    (aux_mode logits, the official aux_loss mode, does send one)."""
    grads = {}
    for m_name in (mode, "logits"):
        m, x = model("mor_ec", 2, aux_mode=m_name, aux_coef=0.1), tokens()
        m.train()
        _, routing = m(x, return_routing=True)
        loss, _ = m.router_loss(routing)
        loss.backward()
        grads[m_name] = {name: (p.grad is not None and bool(p.grad.abs().sum() > 0))
                         for name, p in m.named_parameters()}
    blocks = [n for n in grads[mode] if n.startswith(("base.blocks.", "base.embed"))]
    assert blocks and not any(grads[mode][n] for n in blocks)
    assert any(grads["logits"][n] for n in blocks if n.startswith("base.blocks.1."))
    trained = "routers.1.weight" if mode == "detached" else "aux_routers.1.weight"
    assert grads[mode][trained]
    if mode == "separate":  # the routing router learns from the LM loss alone
        assert not grads[mode]["routers.1.weight"]


def test_separate_router_drives_the_causal_rule_and_the_probe():
    m, x = model("mor_ec", 2, aux_mode="separate"), tokens(T=14)
    torch.nn.init.normal_(m.aux_routers[1].weight, std=1.0)
    _, routing = m(x, rule="threshold", return_routing=True)
    assert torch.equal(routing.active[1], routing.pred_logits[1] > 0)
    assert not torch.equal(routing.pred_logits[1], routing.logits[1])
    _, topk = m(x, return_routing=True)
    assert topk.active[1].sum(1).tolist() == [7, 7]  # top-k still ranks the routing router's scores


def test_router_temperature_divides_the_logits():
    m1, m2, x = model("mor_ec", 2), model("mor_ec", 2, router_temp=2.0), tokens()
    _, r1 = m1(x, return_routing=True)
    _, r2 = m2(x, return_routing=True)
    torch.testing.assert_close(r2.logits[0], r1.logits[0] / 2)


def test_capacity_warmup_decays_from_one_by_a_cosine():
    mor = MoRConfig(variant="mor_ec", n_rec=2, cap_warmup_steps=10)
    assert mor.capacities() == [1.0, 0.5] and mor.capacities(step=9) == [1.0, 0.5]
    assert mor.capacities(step=4)[1] == pytest.approx(0.75)  # (4 + 1) / 10: half-way, cosine 0
    assert mor.capacities(step=0)[1] == pytest.approx(0.5 + 0.5 * 0.5 * (1 + math.cos(math.pi / 10)))
    assert MoRConfig(variant="mor_ec", n_rec=2).capacities(step=0) == [1.0, 0.5]  # off by default
    m, x = model("mor_ec", 2, cap_warmup_steps=10), tokens(T=12)
    m.train()
    counts = [int(m(x, return_routing=True, step=s)[1].active[1].sum(1)[0]) for s in (0, 4, 20)]
    assert counts == [int(12 * mor.capacities(step=0)[1]), 9, 6]
    m.eval()
    assert int(m(x, return_routing=True, step=0)[1].active[1].sum(1)[0]) == 6  # eval: target capacity


# --------------------------------------------------------------------------- causal evaluation


@pytest.mark.parametrize("variant,kw", [("mor_ec", {}), ("mor_ec", {"kv_share": True}),
                                        ("mor_ec", {"aux_mode": "separate"}), ("mor_tc", {})])
def test_causal_rule_does_not_read_future_tokens(variant, kw):
    m = model(variant, 3, **kw)
    for r in [*getattr(m, "routers", []), *getattr(m, "aux_routers", [])]:  # spread router logits so both decisions occur
        torch.nn.init.normal_(r.weight, std=1.0)
    x = tokens(T=14)
    y = x.clone()
    y[:, 9:] = (y[:, 9:] + 7) % 256  # change the future from position 9 on
    lx, rx = m(x, rule="threshold", return_routing=True)
    ly, ry = m(y, rule="threshold", return_routing=True)
    torch.testing.assert_close(lx[:, :9], ly[:, :9])
    assert torch.equal(rx.depth()[:, :9], ry.depth()[:, :9])
    assert len(set(rx.depth().flatten().tolist())) > 1  # routing really varies by token


def test_topk_rule_reads_future_tokens():
    """The training rule is not causal: some future change moves an earlier token's depth."""
    m = model("mor_ec", 2)
    torch.nn.init.normal_(m.routers[1].weight, std=1.0)
    x = tokens(B=8, T=14)
    y = x.clone()
    y[:, 9:] = (y[:, 9:] + 7) % 256
    dx = m(x, return_routing=True)[1].depth()
    dy = m(y, return_routing=True)[1].depth()
    assert not torch.equal(dx[:, :9], dy[:, :9])


@pytest.mark.parametrize("variant,n_rec,kw", [("vanilla", 2, {}), ("recursive", 3, {}), ("recursive_gated", 2, {}), ("mor_ec", 2, {}),
                                               ("mor_ec", 3, {"kv_share": True}), ("mor_ec", 3, {"aux_mode": "separate"}),
                                               ("mor_tc", 3, {})])
def test_kv_cached_decoding_reproduces_the_causal_forward(variant, n_rec, kw):
    m = model(variant, n_rec, **kw)
    for r in [*getattr(m, "routers", []), *getattr(m, "aux_routers", [])]:
        torch.nn.init.normal_(r.weight, std=1.0)
    x = tokens(B=2, T=10)
    torch.testing.assert_close(teacher_forced_logits(m, x), m(x, rule="threshold"), rtol=1e-4, atol=1e-5)


def test_recursion_wise_cache_stores_only_active_tokens():
    """Vanilla stores every token in every layer; MoR-EC with KV sharing stores nothing for
    recursions r >= 1, so its cache is (first + last + one recursion) of the 8 applications."""
    x = tokens(B=2, T=10)
    per_entry = 2 * 32 * 4  # K and V, d_model 32, fp32
    vanilla = generate(model("vanilla"), x[:, :3], 10)
    assert vanilla["cache_bytes_per_seq"] == 8 * 9 * per_entry  # 9 fed tokens (the last is not fed)
    shared = generate(model("mor_ec", 3, kv_share=True), x[:, :3], 10)
    assert shared["cache_bytes_per_seq"] == (2 + 2) * 9 * per_entry
    assert shared["tokens"].shape == (2, 10) and torch.equal(shared["tokens"][:, :3], x[:, :3])


# --------------------------------------------------------------------------- FLOPs


def test_block_flops_by_hand():
    lm = LMConfig(n_layer=3, d_model=8, n_head=2, mlp="relu", d_ff=16, max_len=16)
    # matrices 4*8*8 + 2*8*16 = 512 multiply-adds per token; attention 4 d * n(n+1)/2
    assert block_forward_flops(lm, 4) == 2 * 4 * 512 + 4 * 8 * 10
    # KV sharing: no K, V projections, every query sees all earlier tokens: n (T + 1) / 2 pairs
    assert block_forward_flops(lm, 4, seq_len=10, shared_kv=True) == 2 * 4 * (512 - 128) + 4 * 8 * 22


def test_model_flops_by_hand():
    lm = LMConfig(n_layer=4, d_model=8, n_head=2, mlp="relu", d_ff=16, max_len=16)
    head = 2 * 6 * 8 * 257
    block = lambda n: 2 * n * 512 + 4 * 8 * n * (n + 1) / 2
    assert forward_flops(lm, MoRConfig("vanilla"), 6) == 4 * block(6) + head
    assert forward_flops(lm, MoRConfig("recursive", 2), 6) == 4 * block(6) + head
    ec = MoRConfig("mor_ec", 2)
    assert active_counts(ec, 6) == [6, 3]
    # first + last on 6 tokens, recursion 0 on 6, recursion 1 on 3, routers on 6 then 6 tokens
    assert forward_flops(lm, ec, 6) == 3 * block(6) + block(3) + head + 2 * 8 * 12
    assert train_flops_per_step(lm, ec, 6, 5) == 15 * forward_flops(lm, ec, 6)


def isoflop_points(scale):
    cfg = C.compose("mixture_of_recursions/isoflop", "cpu", scale)
    budgets = list(cfg.figure.measure.budgets)
    for values, run_cfg in zip(C.points(cfg), C.run_configs(cfg)):
        run = OmegaConf.to_container(run_cfg.run, resolve=True)
        lm, mor = lm_config_for(run["module"]["model"])
        flops = train_flops_per_step(lm, mor, run["data"]["seq_len"], run["data"]["batch_size"]) * run["trainer"]["max_steps"]
        yield values, mor, flops, budgets


@pytest.mark.parametrize("scale", ["default", "full"])
def test_isoflop_points_spend_their_budget(scale):
    """Every isoFLOP point is within 3% of a budget; the extras are the equal-steps controls."""
    spent = {}
    for values, mor, flops, budgets in isoflop_points(scale):
        off = min(abs(flops / b - 1) for b in budgets)
        if off < 0.03:
            spent.setdefault((mor.variant, mor.n_rec, mor.kv_share), set()).add(min(budgets, key=lambda b: abs(flops / b - 1)))
        else:
            assert mor.variant == "mor_ec" and flops < budgets[-1], (values, flops)
    full_sets = [k for k, v in spent.items() if len(v) == len(budgets)]
    # default: vanilla, recursive N_r=2, MoR-EC x2 at every budget; full: recursive x2, MoR-TC x2 too
    assert len(full_sets) == (4 if scale == "default" else 7)


@pytest.mark.parametrize("figure", ["depth_map", "throughput"])
def test_other_figures_reuse_isoflop_runs(figure):
    iso = {C.run_hash(r) for r in C.run_configs(C.compose("mixture_of_recursions/isoflop", "cpu", "default"))}
    other = {C.run_hash(r) for r in C.run_configs(C.compose(f"mixture_of_recursions/{figure}", "cpu", "default"))}
    assert other <= iso


# --------------------------------------------------------------------------- module


def test_training_step_reduces_loss_and_carries_aux_loss():
    from replicate.papers.mixture_of_recursions.module import MoRLM

    torch.manual_seed(0)
    module = MoRLM({**LM, "variant": "mor_ec", "n_rec": 2}, {"lr": 1e-2, "max_steps": 20})
    opt = module.configure_optimizers()["optimizer"]
    x = tokens(B=4, T=16)
    batch = (x, torch.roll(x, -1, 1))
    ce, aux, parts = module._losses(batch)
    assert aux > 0 and "aux_bce" in parts
    first = float(ce.detach())
    for _ in range(10):
        opt.zero_grad()
        ce, aux, _ = module._losses(batch)
        (ce + aux).backward()
        opt.step()
    assert float(ce.detach()) < first - 0.5
    assert module.model.routers[1].weight.grad.abs().sum() > 0  # the LM loss reaches the router


# --------------------------------------------------------------------------- claim analysis


def _nll_table(rows):
    import pandas as pd

    return pd.DataFrame([{"variant": variant, "n_rec": n_rec, "aux": "ours", "kv_share": False, "budget": budget,
                          "seed": seed, "nll_causal": nll, "nll_topk": nll - 0.01}
                         for variant, n_rec, budget, seed, nll in rows])


def test_paired_gaps_pool_nr_and_seed_pairs_with_a_t_interval():
    from replicate.papers.mixture_of_recursions.analysis import Side, gap_estimate, over_n_rec, paired_gaps

    table = _nll_table([("recursive", 2, 2, 0, 2.0), ("recursive", 2, 2, 1, 2.1),
                        ("mor_ec", 2, 2, 0, 1.8), ("mor_ec", 2, 2, 1, 1.8), ("mor_ec", 2, 2, 2, 1.0),
                        ("recursive", 3, 2, 0, 2.2), ("recursive", 3, 2, 1, 2.3),
                        ("mor_ec", 3, 2, 0, 1.9), ("mor_ec", 3, 2, 1, 2.1),
                        ("mor_ec", 3, -1, 0, 5.0)])  # an off-budget run is not at budget 2
    gaps = paired_gaps(table, over_n_rec(lambda n: (Side("recursive", 2, n), Side("mor_ec", 2, n))))
    assert list(gaps.gap.round(6)) == [0.2, 0.3, 0.3, 0.2]  # seed 2 has no recursive partner: left out
    est = gap_estimate(gaps)
    # mean 0.25, sd sqrt(0.01 / 3), t_{3, 0.975} = 3.182446: half-width 0.091870
    assert est.n == 4 and est.value == pytest.approx(0.25)
    assert est.interval == pytest.approx((0.25 - 0.091870, 0.25 + 0.091870), abs=1e-5)
    assert "(N_r, seed) run pairs" in est.method
    topk = paired_gaps(table, over_n_rec(lambda n: (Side("recursive", 2, n), Side("mor_ec", 2, n, rule="topk"))))
    assert topk.gap.mean() == pytest.approx(0.26)


def test_share_of_gain_is_a_mean_of_per_unit_shares_over_shared_units():
    import pandas as pd

    from replicate.papers.mixture_of_recursions.analysis import share_of_gain

    def gaps(values):
        return pd.DataFrame([{"comparison": c, "seed": s, "a": 0.0, "b": 0.0, "gap": g}
                             for (c, s), g in zip([("N_r=2", 0), ("N_r=2", 1), ("N_r=3", 0), ("N_r=3", 1)], values)])

    est = share_of_gain(gaps([0.1, 0.1, 0.2, 0.2]), gaps([0.2, 0.3, 0.3, 0.2]))
    # per-unit shares 1/2, 1/3, 2/3, 1: mean 0.625, sd 0.284637, t_{3, 0.975} = 3.182446: half-width 0.452924
    assert est.value == pytest.approx(0.625) and est.n == 4
    assert est.interval == pytest.approx((0.625 - 0.452924, 0.625 + 0.452924), abs=1e-5)
    assert est.units == pytest.approx((0.5, 1 / 3, 2 / 3, 1.0))


def _depth_runs():
    import pandas as pd

    rows = []
    for seed, deep in enumerate([0.1, 0.2, 0.4]):  # MoR-EC N_r=2, three seeds
        rows.append({"seed": seed, "run_dir": f"ec2-{seed}", "probes": {
            "variant": "mor_ec", "n_rec": 2, "kv_share": False, "dead_token_ratio": 0.1,
            "depth_share": {"topk": [0.5, 0.5], "threshold": [1 - deep, deep]}, "rule_agreement": {"1": 0.6 + 0.1 * seed}}})
    rows.append({"seed": 0, "run_dir": "ec3-0", "probes": {
        "variant": "mor_ec", "n_rec": 3, "kv_share": False, "dead_token_ratio": 0.0,
        "depth_share": {"topk": [1 / 3] * 3, "threshold": [0.3, 0.3, 0.4]}, "rule_agreement": {"1": 0.8, "2": 0.9}}})
    rows.append({"seed": 0, "run_dir": "tc3-0", "probes": {
        "variant": "mor_tc", "n_rec": 3, "kv_share": False, "dead_token_ratio": 0.0,
        "depth_share": {"topk": [0.2, 0.3, 0.5], "threshold": [0.2, 0.3, 0.5]}}})
    rows.append({"seed": 0, "run_dir": "van", "probes": {"variant": "vanilla", "n_rec": 2, "kv_share": False,
                                                         "depth_share": {"topk": [], "threshold": []}}})
    return pd.DataFrame(rows)


def test_depth_claims_use_every_seed():
    import math

    from replicate.papers.mixture_of_recursions.analysis import (PAPER_AUX_SUFFIX, causal_depth_deviation, depth_table,
                                                                 rule_agreement, tc_imbalance)

    depths = depth_table(_depth_runs())
    assert list(depths.label) == ["MoR-EC N_r=2"] * 3 + ["MoR-EC N_r=3", "MoR-TC N_r=3"]  # vanilla has no depth
    assert math.isnan(depths.capacity.iloc[-1])  # token-choice has no trained capacity
    dev = causal_depth_deviation(depths)
    # |0.1 - 0.5|, |0.2 - 0.5|, |0.4 - 0.5| = 0.4, 0.3, 0.1: mean 0.26667, sd 0.152753, t_{2, 0.975} = 4.302653
    assert dev.n == 3 and dev.value == pytest.approx(0.8 / 3)
    assert dev.interval == pytest.approx((0.8 / 3 - 0.379456, 0.8 / 3 + 0.379456), abs=1e-5)
    assert causal_depth_deviation(depths, 3).value == pytest.approx(0.4 - 1 / 3)
    agree = rule_agreement(depths)  # runs: 0.6, 0.7, 0.8 (N_r=2 seeds) and 0.85 (N_r=3: mean of its two steps)
    assert agree.n == 4 and agree.value == pytest.approx((0.6 + 0.7 + 0.8 + 0.85) / 4)
    assert rule_agreement(depths, n_rec=3).value == pytest.approx(0.85)
    # token-choice imbalance: shares 0.2, 0.3, 0.5 against 1/3: largest deviation 0.5 - 1/3
    assert tc_imbalance(depths).value == pytest.approx(0.5 - 1 / 3) and tc_imbalance(depths).n == 1
    paper = _depth_runs()
    paper["probes"] = [{**pr, "aux_mode": "logits", "aux_coef": 0.001} if i == 0 else pr
                       for i, pr in enumerate(paper.probes)]
    split = depth_table(paper)
    assert split.label.iloc[0] == "MoR-EC N_r=2" + PAPER_AUX_SUFFIX
    assert rule_agreement(split).n == 3  # the paper-setting control is not pooled with our runs
    assert causal_depth_deviation(split, 2, aux="paper").value == pytest.approx(0.4)
    assert depth_table(_depth_runs().iloc[-1:]).empty  # no MoR run: an empty table with its columns
    assert causal_depth_deviation(depth_table(_depth_runs().iloc[-1:])).n == 0


def test_speedups_pair_timing_rounds():
    from replicate.papers.mixture_of_recursions.analysis import speedup_estimate

    # model: batch 4 in 1, 2 and 4/3 s; baseline: batch 2 in 2 s each round -> (4/t) / (2/2) = 4, 2, 3
    est = speedup_estimate([1.0, 2.0, 4 / 3], [2.0, 2.0, 2.0], 4, 2)
    assert est.units == pytest.approx((4.0, 2.0, 3.0))
    assert est.value == pytest.approx(24 ** (1 / 3)) and est.n == 3 and "timing rounds" in est.method
    with pytest.raises(ValueError, match="not paired"):
        speedup_estimate([1.0], [1.0, 2.0], 1, 1)


def test_claims_are_tagged_and_controls_qualify_the_recursive_claim():
    for figure in ("isoflop", "depth_map", "throughput"):
        claims = C.compose(f"mixture_of_recursions/{figure}", "cpu", "default").figure.claims
        for c in claims:
            assert c.kind in ("paper", "control") and c.source
        if figure == "isoflop":
            controls = {c.id: c.qualifies for c in claims if c.kind == "control"}
            assert controls == {"ec_beats_recursive_topk": "ec_beats_recursive",
                                "ec_gain_not_from_fixed_gate": "ec_beats_recursive",
                                "ec_beats_recursive_equal_steps": "ec_beats_recursive",
                                "ec_beats_fixed_gate_equal_steps": "ec_beats_recursive",
                                "ec_beats_recursive_paper_aux": "ec_beats_recursive"}
        if figure == "depth_map":  # every seed, at least three
            assert {c.id: dict(c.requires) for c in claims} == {
                "routers_separate": {"n_runs_ec": ">= 3"}, "causal_depth_close_to_capacity": {"n_seeds_ec2": ">= 3"},
                "tc_depths_balanced": {"n_runs_tc": ">= 3"},
                "paper_coef_depth_close_to_capacity": {"n_seeds_ec2_paper_coef": ">= 3"},
                "paper_coef_routers_separate": {"n_seeds_ec2_paper_coef": ">= 3"}}
            assert {c.id: c.qualifies for c in claims if c.kind == "control"} == {
                "paper_coef_depth_close_to_capacity": "causal_depth_close_to_capacity",
                "paper_coef_routers_separate": "routers_separate"}


def test_default_aux_setting_is_the_labelled_deviation_with_a_paper_control():
    """text_lm.yaml's aux setting is analysis.DEFAULT_AUX; every figure at the default scale has
    three seeds of the paper-setting control (depth_map, isoflop) and labels it apart."""
    from replicate.papers.mixture_of_recursions.analysis import DEFAULT_AUX, PAPER_AUX, PAPER_AUX_SUFFIX, model_label

    model_cfg = C.compose("mixture_of_recursions/isoflop", "cpu", "default").figure.run.module.model
    assert (model_cfg.aux_mode, model_cfg.aux_coef) == DEFAULT_AUX != PAPER_AUX
    for figure in ("isoflop", "depth_map"):
        runs = C.run_configs(C.compose(f"mixture_of_recursions/{figure}", "cpu", "default"))
        paper = [r for r in runs if (r.run.module.model.aux_mode, r.run.module.model.aux_coef) == PAPER_AUX]
        assert sorted(r.run.seed for r in paper) == [0, 1, 2]
    assert model_label("mor_ec", 2, False, *PAPER_AUX) == "MoR-EC N_r=2" + PAPER_AUX_SUFFIX
    assert model_label("mor_ec", 2, False, *DEFAULT_AUX) == model_label("mor_ec", 2) == "MoR-EC N_r=2"
    assert model_label("mor_ec", 2, False, "logits", 0.01) == "MoR-EC N_r=2 (logits aux 0.01)"
    assert model_label("mor_tc", 3, False, *PAPER_AUX) == "MoR-TC N_r=3"  # no expert-choice aux loss


# --------------------------------------------------------------------------- measures (one per figure)

T2, T5 = 4.302653, 2.570582  # t_{2, 0.975}, t_{5, 0.975}


def _t_interval(units, t):
    import statistics

    mean = statistics.fmean(units)
    half = t * statistics.stdev(units) / math.sqrt(len(units))
    return mean - half, mean + half


def _claim_keys(figure: str) -> set[str]:
    """Every key a claim of the figure's config reads (``measured`` and ``requires``)."""
    claims = OmegaConf.load(C.REPO_ROOT / "configs" / "figure" / "mixture_of_recursions" / f"{figure}.yaml").claims
    return {c.measured for c in claims} | {key for c in claims for key in (c.get("requires") or {})}


def _isoflop_runs():
    """A hand-built isoFLOP run table: budgets 100 and 200 FLOPs, three seeds at the top one."""
    import pandas as pd

    top = {  # (variant, n_rec, extra probes, flops): causal NLL per seed
        ("vanilla", 0, (), 200): [2.00, 2.10, 2.20],
        ("recursive", 2, (), 200): [2.30, 2.30, 2.30],
        ("recursive", 3, (), 200): [2.40, 2.40, 2.40],
        ("mor_ec", 2, (), 200): [2.10, 2.00, 2.15],
        ("mor_ec", 3, (), 200): [2.20, 2.20, 2.20],
        ("mor_tc", 2, (), 200): [2.20, 2.20, 2.20],
        ("mor_tc", 3, (), 200): [2.30, 2.25, 2.35],
        ("mor_ec", 3, (("kv_share", True),), 200): [2.25],
        ("mor_ec", 2, (("aux_mode", "logits"), ("aux_coef", 0.001)), 200): [2.20, 2.15, 2.20],
        ("mor_ec", 2, (), 150): [2.25, 2.20, 2.25],  # equal steps: spends no budget
        ("recursive_gated", 2, (), 200): [2.20, 2.20, 2.20],
        ("vanilla", 0, (), 100): [2.50],  # the lower budget: never read by a claim
    }
    rows = []
    for (variant, n_rec, extra, flops), nlls in top.items():
        for seed, nll in enumerate(nlls):
            topk = nll - 0.05 if variant == "mor_ec" else nll
            probes = {"variant": variant, "n_rec": n_rec, "kv_share": False, "train_flops": float(flops),
                      "nll": {"threshold": nll, "topk": topk}, **dict(extra)}
            rows.append({"seed": seed, "steps": 10, "params": 1000, "wall_seconds": 1.0,
                         "run_dir": f"{variant}-{n_rec}-{dict(extra)}-{flops}-{seed}", "probes": probes})
    return pd.DataFrame(rows)


def _isoflop_cfg():
    return OmegaConf.create({"figure": {"measure": {"budgets": [100.0, 200.0]}}})


def test_isoflop_measures_select_runs_by_config_and_pair_them_by_seed():
    from replicate.papers.mixture_of_recursions import measures

    runs = _isoflop_runs()
    gated = {d: [0.05, 0.04] for d in runs.run_dir if d.startswith("mor_ec-") and d.endswith("-200-0")}
    read = {d: [0.06, 0.03] for d in runs.run_dir if d.startswith("mor_ec-") and "-200-" in d and "kv_share" not in d}
    read.update(gated)
    read["mor_ec-2-{}-200-1"] = [0.07, 0.05]
    m = measures.isoflop(runs, _isoflop_cfg(), read_gates=read.__getitem__)  # a KeyError if any other run is read
    assert _claim_keys("isoflop") <= set(m)

    # recursive minus MoR-EC, (N_r, seed) pairs: N_r=2 0.20, 0.30, 0.15; N_r=3 0.20 x 3
    gain = m["gain_ec_vs_recursive_causal"]
    assert gain.n == 6 and gain.value == pytest.approx(1.25 / 6)
    assert gain.interval == pytest.approx(_t_interval([0.2, 0.3, 0.15, 0.2, 0.2, 0.2], T5))
    assert m["gain_ec_vs_recursive_topk"].value == pytest.approx(1.25 / 6 + 0.05)  # top-k NLL is 0.05 lower
    # MoR-EC N_r=2 minus vanilla: 0.10, -0.10, -0.05 (the lower-budget vanilla run is not paired)
    assert m["gap_ec2_vs_vanilla_causal"].value == pytest.approx(-0.05 / 3) and m["gap_ec2_vs_vanilla_causal"].n == 3
    # TC N_r=3 minus EC N_r=3: 0.10, 0.05, 0.15: mean 0.1, sd 0.05
    tc = m["gap_tc3_vs_ec3"]
    assert tc.value == pytest.approx(0.1) and tc.interval == pytest.approx((0.1 - T2 * 0.05 / math.sqrt(3),
                                                                            0.1 + T2 * 0.05 / math.sqrt(3)))
    # fixed gate: recursive N_r=2 minus fixed-gate = 0.10 per seed, over MoR-EC's 0.20, 0.30, 0.15 -> 1/2, 1/3, 2/3
    share = m["fixed_gate_share_of_ec_gain"]
    assert share.n == 3 and share.value == pytest.approx(0.5)
    assert share.interval == pytest.approx(_t_interval([0.5, 1 / 3, 2 / 3], T2))
    # equal steps (the off-budget MoR-EC runs): recursive minus them 0.05, 0.10, 0.05; fixed-gate minus them
    assert m["equal_steps_gain_ec_vs_recursive"].value == pytest.approx(0.2 / 3)
    assert m["equal_steps_gain_ec_vs_fixed_gate"].value == pytest.approx(-0.1 / 3)
    # the paper's aux setting: recursive minus it 0.10, 0.15, 0.10
    assert m["gain_paper_aux_ec2_vs_recursive"].value == pytest.approx(0.35 / 3)
    assert m["gain_paper_aux_ec2_vs_recursive"].units == pytest.approx((0.1, 0.15, 0.1))
    assert m["kv_share_cost_ec3"].n == 1 and m["kv_share_cost_ec3"].value == pytest.approx(0.05)
    assert (m["trained_gate_ec_min"], m["trained_gate_ec_max"]) == (0.03, 0.07)
    assert m["nll_vanilla"] == pytest.approx(2.1) and m["seed_sd_vanilla"] == pytest.approx(0.1)


def test_isoflop_measures_do_not_depend_on_row_order():
    from replicate.papers.mixture_of_recursions import measures

    runs = _isoflop_runs()
    no_gates = lambda run_dir: []  # noqa: E731
    forward = measures.isoflop(runs, _isoflop_cfg(), read_gates=no_gates)
    backward = measures.isoflop(runs.iloc[::-1].reset_index(drop=True), _isoflop_cfg(), read_gates=no_gates)
    for key in _claim_keys("isoflop"):
        assert backward[key].value == pytest.approx(forward[key].value)
        assert backward[key].interval == pytest.approx(forward[key].interval)


def _depth_map_runs():
    import pandas as pd

    runs = _depth_runs()
    extra = []
    for seed, (deep, agree) in enumerate([(0.5, 0.9), (0.7, 0.8), (0.6, 0.7)]):  # the paper's aux setting
        extra.append({"seed": seed, "run_dir": f"paper-{seed}", "probes": {
            "variant": "mor_ec", "n_rec": 2, "kv_share": False, "aux_mode": "logits", "aux_coef": 0.001,
            "dead_token_ratio": 0.2, "depth_share": {"topk": [0.5, 0.5], "threshold": [1 - deep, deep]},
            "rule_agreement": {"1": agree}}})
    extra.append({"seed": 0, "run_dir": "tc2-0", "probes": {
        "variant": "mor_tc", "n_rec": 2, "kv_share": False, "dead_token_ratio": 0.0,
        "depth_share": {"topk": [0.6, 0.4], "threshold": [0.6, 0.4]}}})
    return pd.concat([runs, pd.DataFrame(extra)], ignore_index=True)


def test_depth_map_measures_return_every_claim_key_by_aux_setting():
    from replicate.papers.mixture_of_recursions import measures

    m = measures.depth_map(_depth_map_runs(), OmegaConf.create({"figure": {"measure": {}}}))
    assert _claim_keys("depth_map") <= set(m)
    # our setting: N_r=2 seeds 0.6, 0.7, 0.8 and N_r=3 0.85 (its two steps' mean); the paper-setting runs apart
    assert m["rule_agreement_ec"].n == 4 and m["rule_agreement_ec"].value == pytest.approx(2.95 / 4)
    assert m["rule_agreement_ec"].interval == pytest.approx(_t_interval([0.6, 0.7, 0.8, 0.85], 3.182446))
    assert m["rule_agreement_ec2_paper_coef"].value == pytest.approx(0.8)
    assert m["rule_agreement_ec2_paper_coef"].interval == pytest.approx(_t_interval([0.9, 0.8, 0.7], T2))
    # |deep share - 1/2|: ours 0.4, 0.3, 0.1; the paper's setting 0, 0.2, 0.1
    assert m["causal_depth_deviation_ec2"].value == pytest.approx(0.8 / 3)
    assert m["causal_depth_deviation_ec2_paper_coef"].value == pytest.approx(0.1)
    assert m["causal_depth_deviation_ec2_paper_coef"].interval == pytest.approx(_t_interval([0.0, 0.2, 0.1], T2))
    # token-choice imbalance: N_r=3 max |share - 1/3| = 1/6, N_r=2 max |share - 1/2| = 0.1
    assert m["tc_depth_imbalance"].n == 2 and m["tc_depth_imbalance"].value == pytest.approx((1 / 6 + 0.1) / 2)
    assert (m["n_runs_ec"], m["n_seeds_ec2"], m["n_seeds_ec2_paper_coef"], m["n_runs_tc"]) == (4, 3, 3, 2)
    assert m["causal_deep_share[MoR-EC N_r=2 (paper aux 0.001)]"].value == pytest.approx(0.6)


def _decoded_runs():
    import pandas as pd

    rows = [("vanilla", 0, False, 12.0, 4, [1.0, 1.0, 1.0]),
            ("mor_ec", 3, False, 8.0, 6, [1.0, 1.5, 0.75]),
            ("mor_ec", 3, True, 6.0, 8, [2.0, 2.0, 2.0])]
    return pd.DataFrame([{"variant": v, "n_rec": n, "kv_share": kv, "label": f"{v} {n} {kv}", "cache_kb_per_seq": kb,
                          "mean_depth": 1.5, "batch": 4, "budget_batch": b, "seconds_fixed": [1.0, 1.0, 1.0],
                          "seconds_budget": s, "device": "test CPU"} for v, n, kv, kb, b, s in rows])


def test_throughput_measures_pair_timing_rounds_and_count_cache_bytes():
    from replicate.papers.mixture_of_recursions import measures

    m = measures.throughput(_decoded_runs(), OmegaConf.create({"figure": {"measure": {}}}))
    assert _claim_keys("throughput") <= set(m)
    assert m["cache_ratio_ec3"].value == pytest.approx(1.5) and m["cache_ratio_ec3"].interval is None
    assert m["cache_ratio_ec3_kv_share"].value == pytest.approx(2.0)
    # per round (6 / t) / (4 / 1): 1.5, 1.0, 2.0 -> geometric mean 3^(1/3), t interval on the logs
    speed = m["speedup_ec3_budget"]
    assert speed.n == 3 and speed.value == pytest.approx(3 ** (1 / 3))
    lo, hi = _t_interval([math.log(1.5), 0.0, math.log(2.0)], T2)
    assert speed.interval == pytest.approx((math.exp(lo), math.exp(hi)))
    assert m["speedup_ec3_fixed"].value == pytest.approx(1.0)
    assert m["speedup_ec3_kv_share_budget"].value == pytest.approx(1.0)  # (8 / 2) / (4 / 1)
    assert math.isnan(m["cache_ratio_ec2"].value) and m["speedup_ec2_budget"].n == 0  # not run: no number
    assert m["device"] == "test CPU" and m["mean_depth_ec3"] == 1.5
    with pytest.raises(ValueError, match="no vanilla run"):
        measures.throughput(_decoded_runs().iloc[1:], OmegaConf.create({"figure": {"measure": {}}}))


def test_rate_table_shows_median_rates_relative_to_vanilla():
    from replicate.papers.mixture_of_recursions.timing import rate_table

    decoded = _decoded_runs().assign(generated_per_seq=10)
    table = rate_table(decoded)
    # MoR-EC N_r=3 at its budget batch 6: median of 1, 1.5, 0.75 s -> 60 tokens / 1 s; vanilla 4 x 10 / 1 s
    assert table.loc["mor_ec 3 False", "tok/s @ budget batch"] == pytest.approx(60.0)
    assert table.loc["mor_ec 3 False", "speed-up @ budget"] == pytest.approx(1.5)
    assert table.loc["vanilla 0 False", "speed-up @ fixed"] == pytest.approx(1.0)


@pytest.mark.parametrize("figure", ["isoflop", "depth_map", "throughput"])
def test_notebooks_take_every_claim_number_from_one_measures_call(figure):
    """The notebook reports what ``measures.<figure>`` returns and builds no Estimate itself."""
    import json
    import re

    notebook = json.loads((C.REPO_ROOT / "notebooks" / "mixture_of_recursions" / f"{figure}.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code")
    assert code.count(f"measurements = measures.{figure}(") == 1 and code.count("ctx.report(measurements)") == 1
    for estimator in ("claims", "mean_interval", "paired_difference", "ratio_interval", "ratio_of_means",
                      "bootstrap", "Estimate(", "gap_estimate", "share_of_gain", "speedup_estimate"):
        assert estimator + "(" not in code and f"import {estimator}" not in code, estimator
    assert not re.search(r"measurements\[[^]]+\]\s*=[^=]|measurements\.update\(", code)  # nothing added in a cell
