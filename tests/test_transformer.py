"""The shared causal LM: causality, RoPE, the explicit-attention path, hooks and config."""

import math

import pytest
import torch

from replicate.nn.transformer import (BOS, Block, CausalLM, LMConfig, apply_rope, causal_mask,
                                      record, rope_angles)

VARIANTS = [dict(pos="rope", norm="rms", mlp="swiglu", qk_norm=True),
            dict(pos="learned", norm="layer", mlp="relu", init="torch_default", bias=True)]


def tiny(**kw) -> CausalLM:
    torch.manual_seed(0)
    base = dict(n_layer=2, d_model=32, n_head=4, max_len=16)
    return CausalLM(LMConfig(**{**base, **kw})).eval()


def tokens(B=2, T=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (B, T), generator=g)
    x[:, 0] = BOS
    return x


@pytest.mark.parametrize("kw", VARIANTS)
def test_changing_a_future_token_never_changes_earlier_logits(kw):
    model = tiny(**kw)
    x = tokens()
    with torch.no_grad():
        ref = model(x)
        for k in (1, 5, 11):
            x2 = x.clone()
            x2[:, k] = (x2[:, k] + 7) % 256
            out = model(x2)
            assert torch.equal(out[:, :k], ref[:, :k]), f"position < {k} changed"
            assert not torch.allclose(out[:, k], ref[:, k]), "the changed position must matter"


def test_rope_hand_computed():
    # head_dim 4, base 100: pair (0, 2) turns by p * 1, pair (1, 3) by p * 100^(-1/2) = p / 10
    p = 3.0
    cos, sin = rope_angles(torch.tensor([p]), head_dim=4, base=100.0)
    assert torch.allclose(cos[0], torch.tensor([math.cos(3), math.cos(0.3), math.cos(3), math.cos(0.3)]))
    a, b, c, d = 1.0, 2.0, 3.0, 4.0
    x = torch.tensor([a, b, c, d]).view(1, 1, 1, 4)  # (B, T, H, D)
    got = apply_rope(x, cos, sin).flatten()
    t0, t1 = 3.0, 0.3
    want = torch.tensor([a * math.cos(t0) - c * math.sin(t0), b * math.cos(t1) - d * math.sin(t1),
                         c * math.cos(t0) + a * math.sin(t0), d * math.cos(t1) + b * math.sin(t1)])
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(got.norm(), x.norm())  # a rotation


def test_rope_scores_depend_only_on_relative_position():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8, generator=g), torch.randn(1, 1, 1, 8, generator=g)

    def score(pq, pk):
        cq, sq = rope_angles(torch.tensor([float(pq)]), 8, 10000.0)
        ck, sk = rope_angles(torch.tensor([float(pk)]), 8, 10000.0)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    assert torch.allclose(score(5, 2), score(13, 10), atol=1e-5)
    assert not torch.allclose(score(5, 2), score(5, 4), atol=1e-3)


@pytest.mark.parametrize("kw", VARIANTS)
def test_explicit_attention_path_equals_sdpa(kw):
    model = tiny(**kw)
    x = tokens()
    with torch.no_grad():
        fast = model(x)
        with record(model) as rec:
            slow = model(x)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert len(rec) == 2 and rec[0]["attn"].shape == (2, 4, 12, 12)
    assert rec[0]["v"].shape == (2, 12, 4, 8)
    assert rec[0]["gate"] is None and rec[0]["value_gate"] is None
    # recording is off again afterwards
    assert all(a.recording is None for a in model.attentions)


def test_attention_probabilities_are_causal_and_rows_sum_to_one():
    model = tiny()
    with torch.no_grad(), record(model) as rec:
        model(tokens())
    for r in rec:
        a = r["attn"]
        assert torch.allclose(a.sum(-1), torch.ones(a.shape[:-1]), atol=1e-6)
        assert torch.equal(a.triu(1), torch.zeros_like(a))
        assert torch.allclose(a[..., 0, 0], torch.ones(a.shape[:2]))  # BOS attends to itself


def test_block_explicit_positions_and_mask_match_defaults():
    torch.manual_seed(0)
    cfg = LMConfig(n_layer=1, d_model=32, n_head=4, max_len=16)
    block = Block(cfg).eval()
    h = torch.randn(2, 10, 32)
    pos = torch.arange(10)
    with torch.no_grad():
        ref = block(h)
        assert torch.allclose(block(h, positions=pos), ref, atol=1e-6)
        assert torch.allclose(block(h, positions=pos, attn_mask=causal_mask(pos)), ref, atol=1e-5)
        # a subset of tokens with their original positions equals running the subset alone when
        # the subset is a prefix (same context, same positions)
        sub = block(h[:, :6], positions=pos[:6].expand(2, 6), attn_mask=causal_mask(pos[:6].expand(2, 6)))
        assert torch.allclose(sub, ref[:, :6], atol=1e-5)
        # the same with the explicit path
        with record(_Wrap(block)):
            assert torch.allclose(block(h, positions=pos, attn_mask=causal_mask(pos)), ref, atol=1e-5)


class _Wrap(torch.nn.Module):  # record() needs .attentions
    def __init__(self, block):
        super().__init__()
        self.attentions = [block.attn]


def test_subset_with_gaps_uses_original_positions():
    # keys kept at positions {0, 2, 5}: position 5 may see 0 and 2, position 2 only 0
    pos = torch.tensor([0, 2, 5])
    m = causal_mask(pos)[0]
    assert m.tolist() == [[True, False, False], [True, True, False], [True, True, True]]


def test_hidden_states_are_the_residual_stream_after_each_block():
    model = tiny()
    x = tokens()
    with torch.no_grad():
        logits, hidden = model(x, return_hidden=True)
        assert len(hidden) == 2 and hidden[0].shape == (2, 12, 32)
        assert torch.allclose(model.lm_head(model.norm_f(hidden[-1])), logits)
        h = model.embed(x)
        h0 = model.blocks[0](h)
        assert torch.allclose(h0, hidden[0])


def test_hooks_plug_in_without_copying_the_model():
    model = tiny()
    x = tokens()

    class Half(torch.nn.Module):
        def forward(self, x_normed, y):
            assert y.shape == (2, 12, 4, 8) and x_normed.shape == (2, 12, 32)
            return 0.5 * y

    attn = model.blocks[0].attn
    with torch.no_grad():
        h = model.blocks[0].norm1(model.embed(x))
        ref = attn(h)
        attn.gate = Half()
        # o_proj is linear without bias, so halving y halves the output
        assert torch.allclose(attn(h), 0.5 * ref, atol=1e-6)
        attn.gate = None
        attn.value_gate = Half()
        # halving every value halves the attention output too
        assert torch.allclose(attn(h), 0.5 * ref, atol=1e-6)


def test_config_init_and_shapes():
    assert LMConfig(d_model=96, mlp="swiglu").hidden_dim == 256  # 2/3 * 4 * 96, multiple of 8
    assert LMConfig(d_model=96, mlp="relu").hidden_dim == 384
    assert LMConfig(d_ff=100).hidden_dim == 100
    with pytest.raises(TypeError, match="n_layers"):
        LMConfig.from_dict({"n_layers": 2})
    with pytest.raises(ValueError, match="norm"):
        LMConfig(norm="batch")
    m = tiny(d_model=64, n_head=2)
    assert abs(m.tok_emb.weight.std().item() - 0.02) < 0.003
    m = tiny(init="torch_default", pos="learned")
    assert abs(m.tok_emb.weight.std().item() - 1.0) < 0.1  # PyTorch's N(0, 1) embedding
    m = tiny(tie_embeddings=True)
    assert m.lm_head.weight is m.tok_emb.weight
    with pytest.raises(ValueError, match="max_len"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


def test_gradients_flow_and_training_reduces_loss():
    model = tiny().train()
    x = tokens(B=4, T=16)
    y = torch.roll(x, -1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss = model.loss(x, y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 1.0
