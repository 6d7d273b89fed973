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
                                                          lm_config_for, topk_mask, unique_params)

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


def test_fixed_gate_vanilla_gates_two_untied_groups_of_middle_blocks():
    """vanilla_gated: vanilla's 8 unique blocks (same parameters as vanilla), the 6 middle ones in
    two groups of 3 each applied as h <- h + 0.05 g(h). With the middle blocks' output projections
    zeroed, g(h) = h, so the two groups scale the first block's output by exactly 1.05^2; unrolled
    by hand, the logits match; and its training FLOPs are vanilla's."""
    gated, plain = model("vanilla_gated", 2), model("vanilla")
    assert gated.mor.fixed_gate() == 0.05 and len(gated.base.blocks) == 8
    assert unique_params(gated) == unique_params(plain)
    assert [len(g) for g in gated.gated_groups()] == [3, 3]
    assert gated.gated_groups()[1][0] is gated.base.blocks[4]
    x = tokens()
    h = gated.first(gated.base.embed(x))
    for group in gated.gated_groups():
        g = h
        for block in group:
            g = block(g)
        h = h + 0.05 * g
    expected = gated.base.lm_head(gated.base.norm_f(gated.last(h)))
    torch.testing.assert_close(gated(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gated(x, rule="threshold"), expected, rtol=1e-5, atol=1e-5)
    # the same weights applied as plain vanilla give other logits: the gate is in the forward
    plain.load_state_dict(gated.state_dict())
    assert not torch.allclose(plain(x), gated(x), atol=1e-3)
    lm = LMConfig(**LM)
    assert forward_flops(lm, MoRConfig("vanilla_gated", 2), 12) == forward_flops(lm, MoRConfig("vanilla"), 12)
    for block in gated.middle:
        torch.nn.init.zeros_(block.attn.o_proj.weight)
        torch.nn.init.zeros_(block.mlp.down.weight)
    h0 = gated.first(gated.base.embed(x))
    expected = gated.base.lm_head(gated.base.norm_f(gated.last(1.05 ** 2 * h0)))
    torch.testing.assert_close(gated(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="kv_share"):
        MoRConfig("vanilla_gated", 2, kv_share=True)
    with pytest.raises(ValueError, match="divisible"):
        lm_config_for({**LM, "variant": "vanilla_gated", "n_rec": 4})


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


def test_random_router_picks_the_top_uniform_scores_with_gate_alpha_u():
    """rand_router (official ``cfg.mor.rand_router``): no router parameters; step r draws
    u ~ U(0, 1) per token (N_r = 3: one draw per step, in order), keeps the top-k of alpha * u
    among the tokens step r-1 kept, and updates them by h + alpha u f(h); no auxiliary loss."""
    from replicate.papers.mixture_of_recursions.model import random_scores

    m, x = model("mor_ec", 3, rand_router=True), tokens(T=12)
    assert not hasattr(m, "routers") and m.router_loss(m(x, return_routing=True)[1])[0] == 0
    torch.manual_seed(7)
    _, routing = m(x, return_routing=True)
    torch.manual_seed(7)
    draws = [torch.rand(2, 12).clamp(1e-6, 1 - 1e-6) for _ in range(3)]
    allowed = torch.ones(2, 12, dtype=torch.bool)
    for r, (u, k) in enumerate(zip(draws, (12, 8, 4))):
        torch.testing.assert_close(torch.sigmoid(routing.logits[r]), u)
        expected = allowed if k == 12 else topk_mask(0.1 * u, allowed, k)
        assert torch.equal(routing.active[r], expected)
        allowed = expected
    # the causal rule keeps a token when u > 1 - c_r / c_(r-1): step 1 keeps u > 1/3, step 2 u > 1/2
    torch.manual_seed(3)
    logits, pred = random_scores((4, 1000), 2 / 3, "cpu")
    assert torch.equal(pred > 0, torch.sigmoid(logits) > 1 / 3)
    assert abs(float((pred > 0).float().mean()) - 2 / 3) < 0.03
    with pytest.raises(ValueError, match="rand_router needs variant mor_ec"):
        MoRConfig(variant="mor_tc", rand_router=True)


def test_random_router_update_matches_h_plus_alpha_u_f_h():
    m, x = model("mor_ec", 2, rand_router=True), tokens(T=8)
    h = m.first(m.base.embed(x))
    torch.manual_seed(11)
    out = m._recursions(h, "topk", Routing())
    torch.manual_seed(11)
    u = [torch.rand(2, 8).clamp(1e-6, 1 - 1e-6) for _ in range(2)]
    expected = m._step_gathered(h, torch.ones(2, 8, dtype=torch.bool), 0.1 * u[0])
    expected = m._step_gathered(expected, topk_mask(0.1 * u[1], torch.ones(2, 8, dtype=torch.bool), 4), 0.1 * u[1])
    torch.testing.assert_close(out, expected)


def test_expert_choice_z_loss_by_hand_and_off_by_default():
    """Official z-loss of a one-output router: logsumexp over one logit is the logit, so
    z_r = mean over the tokens step r ranked of logit^2, summed over steps, times ec_z_coef."""
    from replicate.papers.mixture_of_recursions.model import ec_z_loss

    logits = torch.tensor([[1.0, -2.0, 3.0]])
    scored = torch.tensor([[True, True, False]])
    torch.testing.assert_close(ec_z_loss(logits, scored), torch.tensor(2.5))  # (1 + 4) / 2
    x = tokens()
    off, on = model("mor_ec", 2), model("mor_ec", 2, ec_z_coef=0.01)
    _, routing = on(x, return_routing=True)
    loss_on, parts_on = on.router_loss(routing)
    loss_off, parts_off = off.router_loss(off(x, return_routing=True)[1])
    z = sum(float((lg.detach().square() * sc).sum() / sc.sum()) for lg, sc in zip(routing.logits, routing.scored))
    assert "z_loss" not in parts_off and parts_on["z_loss"] == pytest.approx(z, rel=1e-5)
    torch.testing.assert_close(loss_on - loss_off, torch.tensor(0.01 * z), rtol=1e-4, atol=1e-9)
    with pytest.raises(ValueError, match="ec_z_coef"):
        MoRConfig(variant="mor_ec", ec_z_coef=-1.0)


def test_random_router_counts_no_router_flops_and_cannot_be_decoded():
    lm = LMConfig(**LM)
    trained, random = MoRConfig(variant="mor_ec", n_rec=2), MoRConfig(variant="mor_ec", n_rec=2, rand_router=True)
    assert forward_flops(lm, trained, 12) - forward_flops(lm, random, 12) == 2 * 32 * (12 + 12)  # two ranked steps
    with pytest.raises(ValueError, match="random-router"):
        generate(model("mor_ec", 2, rand_router=True), tokens(T=4), 8)


def test_token_choice_recurses_plainly_and_exits_with_its_gate_onto_the_input():
    """Official token_choice_router.py: recursions r < d_t apply f plainly, and a token leaves as
    h_in + g f^(d_t)(h_in). With the middle blocks' output projections zeroed f(h) = h, so every
    token leaves as (1 + g) h_in whatever its depth (a gate at every step would give (1 + g)^d)."""
    m, x = model("mor_tc", 3), tokens()
    for block in m.middle:
        torch.nn.init.zeros_(block.attn.o_proj.weight)
        torch.nn.init.zeros_(block.mlp.down.weight)
    h_in, routing = m.first(m.base.embed(x)), Routing()
    depth, gate = m._token_choice(h_in)
    out = m._recursions(h_in, "topk", routing)
    torch.testing.assert_close(out, (1 + gate[..., None]) * h_in)
    assert torch.equal(routing.depth(), depth) and depth.unique().numel() > 1  # several depths, one rule


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


@pytest.mark.parametrize("variant,n_rec,kw", [("vanilla", 2, {}), ("vanilla_gated", 2, {}), ("recursive", 3, {}), ("recursive_gated", 2, {}), ("mor_ec", 2, {}),
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
    # default: vanilla, recursive N_r=2, MoR-EC N_r=2 at every budget; full: recursive x2, MoR-EC x2, MoR-TC x2 too
    assert sorted(full_sets)[:1] == [("mor_ec", 2, False)] and len(full_sets) == (3 if scale == "default" else 7)


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

    return pd.DataFrame([{"variant": variant, "n_rec": n_rec, "aux": "paper", "kv_share": False, "rand_router": False,
                          "budget": budget,
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

    from replicate.papers.mixture_of_recursions.analysis import (DETACHED_AUX_SUFFIX, causal_depth_deviation,
                                                                 depth_table, rule_agreement, tc_imbalance)

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
    control = _depth_runs()
    control["probes"] = [{**pr, "aux_mode": "detached", "aux_coef": 0.1} if i == 0 else pr
                         for i, pr in enumerate(control.probes)]
    split = depth_table(control)
    assert split.label.iloc[0] == "MoR-EC N_r=2" + DETACHED_AUX_SUFFIX
    assert rule_agreement(split).n == 3  # the detached-BCE control is not pooled with the paper-setting runs
    assert causal_depth_deviation(split, 2, aux="detached").value == pytest.approx(0.4)
    random = _depth_runs()
    random["probes"] = [{**pr, "rand_router": True} if i == 0 else pr for i, pr in enumerate(random.probes)]
    assert len(depth_table(random)) == 4  # a random router has no routing to map
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
            assert controls == {name: "ec2_beats_recursive" for name in (
                "ec2_beats_recursive_topk", "ec_beats_recursive_detached_aux", "ec_beats_rand_router",
                "ec_gain_not_from_fixed_gate", "ec_beats_recursive_equal_steps", "ec_beats_fixed_gate_equal_steps")} | {
                "ec2_vs_vanilla_fixed_gate": "ec2_vs_vanilla"}
            paper = {c.id: c.measured for c in claims if c.kind == "paper"}
            assert paper["ec2_beats_recursive"].startswith("gain_ec2_") and paper["ec3_beats_recursive"].startswith("gain_ec3_")
        if figure == "depth_map":  # every seed, at least three
            assert {c.id: dict(c.requires) for c in claims} == {
                "routers_separate": {"n_runs_ec": ">= 3"}, "causal_depth_close_to_capacity": {"n_seeds_ec2": ">= 3"},
                "tc_depths_balanced": {"n_runs_tc": ">= 3"},
                "detached_aux_depth_close_to_capacity": {"n_seeds_ec2_detached": ">= 3"},
                "detached_aux_routers_separate": {"n_seeds_ec2_detached": ">= 3"}}
            assert {c.id: c.qualifies for c in claims if c.kind == "control"} == {
                "detached_aux_depth_close_to_capacity": "causal_depth_close_to_capacity",
                "detached_aux_routers_separate": "routers_separate"}
        paper_numbers = [(c.source, c.paper_value) for c in claims if c.kind == "paper"]
        assert len(paper_numbers) == len(set(paper_numbers))  # a paper number is counted once


def test_default_aux_setting_is_the_papers_with_a_detached_control():
    """text_lm.yaml's router settings are the official configs' (analysis.PAPER_AUX, no capacity
    warm-up, no expert-choice z-loss, trained routers); isoflop and depth_map have three seeds of
    the detached-BCE control, and isoflop three of the random router, each labelled apart."""
    from replicate.papers.mixture_of_recursions.analysis import (DETACHED_AUX, DETACHED_AUX_SUFFIX, PAPER_AUX,
                                                                 RANDOM_ROUTER_SUFFIX, model_label)

    model_cfg = C.compose("mixture_of_recursions/isoflop", "cpu", "default").figure.run.module.model
    assert (model_cfg.aux_mode, model_cfg.aux_coef) == PAPER_AUX != DETACHED_AUX
    assert (model_cfg.alpha, model_cfg.router_temp, model_cfg.cap_warmup_steps) == (0.1, 1.0, 0)
    assert (model_cfg.rand_router, model_cfg.ec_z_coef, model_cfg.balance_coef, model_cfg.z_coef) == (False, 0.0, 0.1, 1e-5)
    for figure in ("isoflop", "depth_map"):
        runs = C.run_configs(C.compose(f"mixture_of_recursions/{figure}", "cpu", "default"))
        control = [r for r in runs if (r.run.module.model.aux_mode, r.run.module.model.aux_coef) == DETACHED_AUX]
        assert sorted(r.run.seed for r in control) == [0, 1, 2]
    runs = C.run_configs(C.compose("mixture_of_recursions/isoflop", "cpu", "default"))
    assert sorted(r.run.seed for r in runs if r.run.module.model.rand_router) == [0, 1, 2]
    assert model_label("mor_ec", 2, False, *DETACHED_AUX) == "MoR-EC N_r=2" + DETACHED_AUX_SUFFIX
    assert model_label("mor_ec", 2, False, *PAPER_AUX) == model_label("mor_ec", 2) == "MoR-EC N_r=2"
    assert model_label("mor_ec", 2, False, "logits", 0.01) == "MoR-EC N_r=2 (logits aux 0.01)"
    assert model_label("mor_ec", 2, False, *PAPER_AUX, rand_router=True) == "MoR-EC N_r=2" + RANDOM_ROUTER_SUFFIX
    assert model_label("mor_tc", 3, False, *DETACHED_AUX) == "MoR-TC N_r=3"  # no expert-choice aux loss


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
        ("mor_ec", 3, (("kv_share", True),), 200): [2.25, 2.21, 2.20],
        ("mor_ec", 2, (("aux_mode", "detached"), ("aux_coef", 0.1)), 200): [2.20, 2.15, 2.20],
        ("mor_ec", 2, (("rand_router", True),), 200): [2.25, 2.25, 2.35],
        ("mor_ec", 2, (), 150): [2.25, 2.20, 2.25],  # equal steps: spends no budget
        ("recursive_gated", 2, (), 200): [2.20, 2.20, 2.20],
        ("vanilla_gated", 2, (), 200): [2.05, 2.05, 2.25],
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
    read = {d: [0.06, 0.03] for d in runs.run_dir
            if d.startswith("mor_ec-") and "-200-" in d and "kv_share" not in d and "rand_router" not in d}
    read.update(gated)
    read["mor_ec-2-{}-200-1"] = [0.07, 0.05]
    m = measures.isoflop(runs, _isoflop_cfg(), read_gates=read.__getitem__)  # a KeyError if any other run is read
    assert _claim_keys("isoflop") <= set(m)

    # recursive minus MoR-EC, (N_r, seed) pairs: N_r=2 0.20, 0.30, 0.15; N_r=3 0.20 x 3
    gain = m["gain_ec_vs_recursive_causal"]
    assert gain.n == 6 and gain.value == pytest.approx(1.25 / 6)
    assert gain.interval == pytest.approx(_t_interval([0.2, 0.3, 0.15, 0.2, 0.2, 0.2], T5))
    assert m["gain_ec_vs_recursive_topk"].value == pytest.approx(1.25 / 6 + 0.05)  # top-k NLL is 0.05 lower
    # each N_r its own claim: N_r=2 0.20, 0.30, 0.15; N_r=3 0.20 x 3 (seeds)
    assert m["gain_ec2_vs_recursive2_causal"].units == pytest.approx((0.2, 0.3, 0.15))
    assert m["gain_ec2_vs_recursive2_causal"].interval == pytest.approx(_t_interval([0.2, 0.3, 0.15], T2))
    assert m["gain_ec3_vs_recursive3_causal"].value == pytest.approx(0.2) and m["gain_ec3_vs_recursive3_causal"].n == 3
    assert m["gain_ec2_vs_recursive2_topk"].value == pytest.approx(0.65 / 3 + 0.05)
    # random router minus MoR-EC N_r=2: 0.15, 0.25, 0.20; recursive minus random router 0.05, 0.05, -0.05
    assert m["gain_ec2_vs_rand_router"].units == pytest.approx((0.15, 0.25, 0.2))
    assert m["gain_rand_router_vs_recursive2"].value == pytest.approx(0.05 / 3)
    # MoR-EC N_r=2 minus vanilla: 0.10, -0.10, -0.05 (the lower-budget vanilla run is not paired)
    assert m["gap_ec2_vs_vanilla_causal"].value == pytest.approx(-0.05 / 3) and m["gap_ec2_vs_vanilla_causal"].n == 3
    # the fixed-gate vanilla control, picked by its variant (not vanilla's runs): MoR-EC N_r=2 minus it
    # 0.05, -0.05, -0.10; vanilla minus it -0.05, 0.05, -0.05; recursive fixed-gate minus it 0.15, 0.15, -0.05
    assert m["gap_ec2_vs_vanilla_gated_causal"].units == pytest.approx((0.05, -0.05, -0.10))
    assert m["gap_ec2_vs_vanilla_gated_causal"].interval == pytest.approx(_t_interval([0.05, -0.05, -0.10], T2))
    assert m["gain_gated_vanilla_vs_vanilla"].units == pytest.approx((-0.05, 0.05, -0.05))
    assert m["gap_fixed_gate2_vs_vanilla_gated"].value == pytest.approx(0.25 / 3)
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
    # the detached-BCE control: recursive minus it 0.10, 0.15, 0.10
    assert m["gain_detached_aux_ec2_vs_recursive"].value == pytest.approx(0.35 / 3)
    assert m["gain_detached_aux_ec2_vs_recursive"].units == pytest.approx((0.1, 0.15, 0.1))
    assert m["gap_detached_vs_paper_aux_ec2"].units == pytest.approx((0.1, 0.15, 0.05))
    # KV sharing minus MoR-EC N_r=3: 0.05, 0.01, 0.00
    assert m["kv_share_cost_ec3"].n == 3 and m["kv_share_cost_ec3"].value == pytest.approx(0.02)
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
    for seed, (deep, agree) in enumerate([(0.5, 0.9), (0.7, 0.8), (0.6, 0.7)]):  # the detached-BCE control
        extra.append({"seed": seed, "run_dir": f"detached-{seed}", "probes": {
            "variant": "mor_ec", "n_rec": 2, "kv_share": False, "aux_mode": "detached", "aux_coef": 0.1,
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
    # the paper's setting: N_r=2 seeds 0.6, 0.7, 0.8 and N_r=3 0.85 (its two steps' mean); the control apart
    assert m["rule_agreement_ec"].n == 4 and m["rule_agreement_ec"].value == pytest.approx(2.95 / 4)
    assert m["rule_agreement_ec"].interval == pytest.approx(_t_interval([0.6, 0.7, 0.8, 0.85], 3.182446))
    assert m["rule_agreement_ec2"].value == pytest.approx(0.7)
    assert m["rule_agreement_ec2_detached"].value == pytest.approx(0.8)
    assert m["rule_agreement_ec2_detached"].interval == pytest.approx(_t_interval([0.9, 0.8, 0.7], T2))
    # |deep share - 1/2|: the paper's setting 0.4, 0.3, 0.1; the detached control 0, 0.2, 0.1
    assert m["causal_depth_deviation_ec2"].value == pytest.approx(0.8 / 3)
    assert m["causal_depth_deviation_ec2_detached"].value == pytest.approx(0.1)
    assert m["causal_depth_deviation_ec2_detached"].interval == pytest.approx(_t_interval([0.0, 0.2, 0.1], T2))
    # token-choice imbalance: N_r=3 max |share - 1/3| = 1/6, N_r=2 max |share - 1/2| = 0.1
    assert m["tc_depth_imbalance"].n == 2 and m["tc_depth_imbalance"].value == pytest.approx((1 / 6 + 0.1) / 2)
    assert (m["n_runs_ec"], m["n_seeds_ec2"], m["n_seeds_ec2_detached"], m["n_runs_tc"]) == (4, 3, 3, 2)
    assert m["causal_deep_share[MoR-EC N_r=2 (detached aux 0.1)]"].value == pytest.approx(0.6)


def _decoded_runs():
    """Three seeds of vanilla and MoR-EC N_r=3, one of MoR-EC N_r=3 with KV sharing; per run the
    seconds of one generation in each of three interleaved timing rounds."""
    import pandas as pd

    rows = [("vanilla", 0, False, s, 12.0, 4, [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]) for s in range(3)]
    rows += [("mor_ec", 3, False, 0, 8.0, 6, [0.5, 0.5, 0.6], [1.0, 1.5, 0.75]),
             ("mor_ec", 3, False, 1, 6.0, 8, [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]),
             ("mor_ec", 3, False, 2, 12.0, 4, [2.0, 2.0, 2.0], [2.0, 2.0, 2.0]),
             ("mor_ec", 3, True, 0, 6.0, 8, [1.0, 1.0, 1.0], [2.0, 2.0, 2.0])]
    return pd.DataFrame([{"variant": v, "n_rec": n, "kv_share": kv, "seed": seed, "label": f"{v} {n} {kv}",
                          "cache_kb_per_seq": kb, "mean_depth": 1.5, "batch": 4, "budget_batch": b,
                          "seconds_fixed": fixed, "seconds_budget": budget, "device": "test CPU"}
                         for v, n, kv, seed, kb, b, fixed, budget in rows])


def test_throughput_measures_pair_seeds_and_separate_the_batch_size_gain():
    from replicate.papers.mixture_of_recursions import measures

    m = measures.throughput(_decoded_runs(), OmegaConf.create({"figure": {"measure": {}}}))
    assert _claim_keys("throughput") <= set(m)
    # cache: vanilla 12 KB over 8, 6, 12 per seed -> 1.5, 2, 1: geometric mean 3^(1/3), t on the logs over seeds
    cache = m["cache_ratio_ec3"]
    assert cache.n == 3 and cache.value == pytest.approx(3 ** (1 / 3)) and "seeds" in cache.method
    lo, hi = _t_interval([math.log(1.5), math.log(2.0), 0.0], T2)
    assert cache.interval == pytest.approx((math.exp(lo), math.exp(hi)))
    # fixed batch 4 for both: per seed (4 / median t) / (4 / 1) = 2, 1, 0.5 -> geometric mean 1
    assert m["speedup_ec3_fixed"].units == pytest.approx((2.0, 1.0, 0.5)) and m["speedup_ec3_fixed"].value == pytest.approx(1.0)
    # budget: (6 / 1) / 4, (8 / 2) / 4, (4 / 2) / 4 = 1.5, 1, 0.5
    # batch-size gain, own budget rate over own fixed rate: (6 / 1) / (4 / 0.5), (8 / 2) / (4 / 1), (4 / 2) / (4 / 2)
    assert m["speedup_ec3_budget"].units == pytest.approx((1.5, 1.0, 0.5))
    assert m["batch_gain_ec3"].units == pytest.approx((0.75, 1.0, 1.0))
    for fixed, gain, budget in zip(m["speedup_ec3_fixed"].units, m["batch_gain_ec3"].units, m["speedup_ec3_budget"].units):
        assert fixed * gain == pytest.approx(budget)  # budget gain = depth-wise gain x batch-size gain
    assert m["n_seeds_ec3"] == 3 and m["n_seeds_ec3_kv_share"] == 1
    assert m["speedup_ec3_kv_share_budget"].value == pytest.approx(1.0)  # (8 / 2) / (4 / 1), seed 0
    assert math.isnan(m["cache_ratio_ec2"].value) and m["speedup_ec2_budget"].n == 0  # not run: no number
    assert m["device"] == "test CPU" and m["mean_depth_ec3"] == 1.5
    with pytest.raises(ValueError, match="no vanilla run"):
        measures.throughput(_decoded_runs().iloc[3:], OmegaConf.create({"figure": {"measure": {}}}))
    with pytest.raises(ValueError, match="share a seed"):
        measures.throughput(_decoded_runs().assign(seed=0), OmegaConf.create({"figure": {"measure": {}}}))


def test_rate_table_shows_mean_rates_over_seeds_relative_to_vanilla():
    from replicate.papers.mixture_of_recursions.timing import rate_table

    decoded = _decoded_runs().assign(generated_per_seq=10)
    table = rate_table(decoded)
    # MoR-EC N_r=3 at its budget batch: 6 x 10 / 1 s, 8 x 10 / 2 s, 4 x 10 / 2 s -> mean 40; vanilla 4 x 10 / 1 s
    assert table.loc["mor_ec 3 False", "tok/s @ budget batch"] == pytest.approx(40.0)
    assert table.loc["mor_ec 3 False", "speed-up @ budget"] == pytest.approx(1.0)
    assert table.loc["mor_ec 3 False", "seeds"] == 3 and table.loc["mor_ec 3 True", "seeds"] == 1
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


# --------------------------------------------------------------------------- research note against the configs

NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}


def _configured_numbers() -> dict[str, set[float]]:
    """Step counts (trainer.max_steps, optim.warmup_steps), seeds per model and lr of every
    mixture_of_recursions figure at the default and full scales."""
    steps, seed_counts, lrs = set(), set(), set()
    for figure in ("isoflop", "depth_map", "throughput"):
        for scale in ("default", "full"):
            seeds: dict[str, set[int]] = {}
            for run_cfg in C.run_configs(C.compose(f"mixture_of_recursions/{figure}", "cpu", scale)):
                run = OmegaConf.to_container(run_cfg.run, resolve=True)
                steps |= {run["trainer"]["max_steps"], run["module"]["optim"]["warmup_steps"]}
                lrs.add(float(run["module"]["optim"]["lr"]))
                model_key = repr(sorted(run["module"]["model"].items())) + str(run["trainer"]["max_steps"])
                seeds.setdefault(model_key, set()).add(run["seed"])
            seed_counts |= {len(s) for s in seeds.values()}
    return {"steps": {float(s) for s in steps}, "seeds": {float(n) for n in seed_counts}, "lr": lrs}


def test_research_note_numbers_agree_with_the_configs():
    """Every number of steps, seeds or lr in docs/papers/mixture_of_recursions.md is one the
    configs hold (official-config values are quoted as their field names, e.g. `num_warmup_steps`
    86, so they are not read as ours), and the default aux setting it names is text_lm.yaml's."""
    import re

    text = (C.REPO_ROOT / "docs" / "papers" / "mixture_of_recursions.md").read_text()
    allowed = _configured_numbers()
    found = {"steps": [], "seeds": [], "lr": []}
    for match in re.finditer(r"((?:\d[\d,]*\s*/\s*)*\d[\d,]*)(?:-| )(?:vanilla |warm-up |training )?steps?\b", text):
        found["steps"] += [float(n.replace(",", "")) for n in match.group(1).split("/")]
    for match in re.finditer(r"\b(\d+|" + "|".join(NUMBER_WORDS) + r") seeds?\b", text):
        word = match.group(1)
        found["seeds"].append(float(NUMBER_WORDS.get(word, word)))
    for match in re.finditer(r"(?:\blr|learning[_ ]rate`?)\s*[=:]?\s*(\d[\d.]*(?:e-?\d+)?)", text):
        found["lr"].append(float(match.group(1)))
    assert found["steps"] and found["seeds"] and found["lr"]  # the patterns still read the note
    for kind, values in found.items():
        wrong = sorted(set(values) - allowed[kind])
        assert not wrong, f"docs/papers/mixture_of_recursions.md: {kind} {wrong} are in no config ({sorted(allowed[kind])})"
    model_cfg = C.compose("mixture_of_recursions/isoflop", "cpu", "default").figure.run.module.model
    default = re.search(r"\*\*Default here: the paper's setting, `(\w+)` with \$\\lambda\$ = ([\d.]+)\*\*", text)
    assert default and (default.group(1), float(default.group(2))) == (model_cfg.aux_mode, model_cfg.aux_coef)


def test_answer_lists_paper_claims_then_controls_as_computed():
    import pandas as pd

    from replicate.papers.mixture_of_recursions.analysis import answer_markdown

    claims = pd.DataFrame([
        {"id": "ctl", "kind": "control → a", "measured": 0.0123456, "interval": "[0.01, 0.02]", "n": 3,
         "verdict": "replicated"},
        {"id": "a", "kind": "paper", "measured": -0.5, "interval": "[-0.9, -0.1]", "n": 3, "verdict": "not_replicated"},
        {"id": "b", "kind": "paper", "measured": float("nan"), "interval": "—", "n": 0, "verdict": "inconclusive"},
    ]).set_index("id")
    text = answer_markdown(claims)
    paper, control = text.split("\n\n")
    assert paper == ("**Paper claims (at the paper's setting):** `a` **not_replicated** (-0.5 [-0.9, -0.1], n = 3); "
                     "`b` **inconclusive** (n/a —, n = 0).")
    assert control == "**Controls (ours):** `ctl` **replicated** (0.01235 [0.01, 0.02], n = 3; qualifies `a`)."
    assert answer_markdown(claims[claims.kind == "paper"]).startswith("**Paper claims") and "Controls" not in answer_markdown(
        claims[claims.kind == "paper"])
