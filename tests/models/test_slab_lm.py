"""SLAB-LM: prefill + steps == full forward, generation, folding parity, configs, state layout, bad input;
hybrids (attention_pattern) through the same tests."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from slab_edge.errors import InputError
from slab_edge.layers.norms import RepBN, set_progressive_schedule
from slab_edge.layers.reparam import FoldCheckError, remaining_norms, reparameterize_model
from slab_edge.models.slab_lm import (
    SlabLM,
    SlabLMConfig,
    blockwise_fold_parity,
    create_slab_lm,
    fold_lm,
    sample_next_token,
    slab_lm_config,
)
from slab_edge.testing import assert_rel_close, randomize_norm_statistics

ATTENTIONS = ["sla", "gla", "softmax"]
NORMS = ["rmsnorm", "prepbn"]
#: 3:1 linear:softmax hybrids; 4 layers, as the tiny config's 2 take no 3:1 pattern
HYBRIDS = {
    "sla+softmax": dict(attention="sla", attention_pattern="LLLS", num_layers=4),
    "gla+softmax": dict(attention="gla", attention_pattern="LLLS", num_layers=4),
}
MODELS = ATTENTIONS + list(HYBRIDS)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and RepBN parameters (the all-zero RepBN init would make PRepBN logits zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, RepBN):
                c = m.bn.num_features
                m.bn.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                m.bn.running_var.copy_(torch.rand(c, generator=gen) * 0.02 + 0.005)
                m.bn.weight.copy_(1 + 0.1 * torch.randn(c, generator=gen))
                m.bn.bias.copy_(0.1 * torch.randn(c, generator=gen))
                m.alpha.copy_(0.1 * torch.randn(1, generator=gen))
    return model


def tiny(attention: str, norm: str = "rmsnorm", seed: int = 0, **overrides) -> SlabLM:
    """The tiny config with `attention` (sla | gla | softmax, or a HYBRIDS name) and random BN statistics."""
    torch.manual_seed(seed)
    mixer = HYBRIDS.get(attention, {"attention": attention})
    return randomize(create_slab_lm("tiny", norm=norm, **{**mixer, **overrides})).eval()


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("attention", MODELS)
def test_prefill_and_steps_equal_full_forward(attention, norm):
    model = tiny(attention, norm)
    ids = torch.randint(0, 256, (2, 80), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)
        logits, state = model.prefill(ids[:, :67])
        steps = [logits]
        for t in range(67, 80):
            step_logits, state = model.step(ids[:, t], state)
            steps.append(step_logits[:, None])
    assert full.shape == (2, 80, 256)
    assert_rel_close(torch.cat(steps, 1), full, 1e-5, f"{attention}/{norm}")


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("attention", MODELS)
def test_logits_before_a_changed_token_do_not_move(attention, norm):
    """Causality of the chunked training forward (cut inside chunk 2 of 64); the GPU twin runs fla's kernels
    (tests/gpu/test_causality_gpu.py). Eval mode: training-mode BatchNorm shares batch statistics over all
    positions by design (PRepBN, as in the paper)."""
    model, cut = tiny(attention, norm), 100
    ids = torch.randint(0, 256, (2, 150), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[:, cut:] = (ids[:, cut:] + 1) % 256
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert (a[:, :cut] == b[:, :cut]).all()
    assert (a[:, cut:] - b[:, cut:]).abs().max() > 1e-3  # the change did reach the later logits


@pytest.mark.parametrize("attention", MODELS)
def test_greedy_generate_is_deterministic_and_is_the_argmax_loop(attention):
    model = tiny(attention)
    prompt = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(2))
    out = model.generate(prompt, max_new_tokens=12)
    assert out.shape == (2, 17) and torch.equal(out[:, :5], prompt)
    assert torch.equal(model.generate(prompt, max_new_tokens=12), out)
    ids = prompt
    with torch.no_grad():
        for _ in range(12):  # no cache: the whole sequence again for every token
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)


def test_generate_leaves_training_mode_and_accepts_1d_prompt():
    model = tiny("gla").train()
    out = model.generate(torch.tensor([1, 2, 3]), max_new_tokens=3)
    assert out.shape == (1, 6) and model.training


def test_sampling_filters_and_reproducibility():
    model = tiny("sla")
    prompt = torch.randint(0, 256, (3, 4), generator=torch.Generator().manual_seed(3))
    greedy = model.generate(prompt, 6)
    kwargs = dict(do_sample=True, temperature=0.8)
    a = model.generate(prompt, 6, generator=torch.Generator().manual_seed(0), **kwargs)
    b = model.generate(prompt, 6, generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(a, b)
    assert torch.equal(model.generate(prompt, 6, top_k=1, **kwargs), greedy)
    assert torch.equal(model.generate(prompt, 6, top_p=1e-6, **kwargs), greedy)


def test_sample_next_token_filters():
    logits = torch.tensor([[0.0, 3.0, 2.9, -5.0]]).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    top2 = sample_next_token(logits, True, top_k=2, generator=gen)
    assert set(top2.tolist()) == {1, 2}
    nucleus = sample_next_token(logits, True, top_p=0.5, generator=gen)  # p(1) ~ 0.51 reaches 0.5 alone
    assert set(nucleus.tolist()) == {1}
    wide = sample_next_token(logits, True, top_p=0.99, generator=gen)
    assert set(wide.tolist()) == {0, 1, 2}
    for bad in (dict(temperature=0.0), dict(top_k=0), dict(top_p=1.5)):
        with pytest.raises(InputError):
            sample_next_token(logits, True, **bad)


def test_eos_pads_finished_sequences_and_stops_early():
    model = tiny("gla")
    prompt = torch.randint(0, 256, (2, 4), generator=torch.Generator().manual_seed(4))
    greedy = model.generate(prompt, 8)
    eos = int(greedy[0, 6])  # the third token generated for sequence 0
    out = model.generate(prompt, 8, eos_token_id=eos)
    first = int((out[0, 4:] == eos).nonzero()[0])
    assert (out[0, 4 + first :] == eos).all()
    assert torch.equal(out[:, : 4 + first + 1], greedy[:, : 4 + first + 1])
    both = model.generate(prompt, 8, eos_token_id=[int(greedy[0, 4]), int(greedy[1, 4])])
    assert both.shape == (2, 5)  # every sequence ended on its first token


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("attention", MODELS)
def test_fold_parity_and_strict_deploy_load(attention, tie):
    model = tiny(attention, "prepbn", tie_embeddings=tie)
    ids = torch.randint(0, 256, (2, 70), generator=torch.Generator().manual_seed(5))
    deploy = reparameterize_model(model)  # raises if a foldable norm is left
    left = remaining_norms(deploy)
    assert all(name.endswith("attn.g_norm") for name in left), left
    assert sorted(left) == sorted(deploy.unfoldable_norms)
    built = SlabLM(model.config, deploy=True)
    built.load_state_dict(deploy.state_dict(), strict=True)
    with torch.no_grad():
        ref = model(ids)
        assert_rel_close(deploy(ids), ref, 1e-5, "folded")
        assert_rel_close(built.eval()(ids), ref, 1e-5, "deploy=True")
        _, state = deploy.prefill(ids[:, :60])
        step_logits, _ = deploy.step(ids[:, 60], state)
    assert_rel_close(step_logits, ref[:, 60], 1e-5, "folded step")
    if tie:  # the folded head is W diag(a): no longer the embedding
        assert deploy.head.weight is not deploy.embed.weight and model.head.weight is model.embed.weight


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_random_statistics_overflow_a_deep_model_but_every_fold_is_exact(attention):
    """Issue 12.5: the NaN fold parity of bench/lm_decode_torch.py at 350m.

    With random BatchNorm statistics an untrained PRepBN stack normalises nothing per token; at 350m's
    per-layer gain (init std 0.02 at width 1024 = 0.08 at width 64) the residual stream overflows within 18
    layers, so a whole-model parity compares inf with inf. fold_lm refuses to report that; the blockwise
    parity still checks every fold, and catches a wrong one.
    """
    model = randomize_norm_statistics(
        tiny(attention, "prepbn", num_layers=18, ffn_dim=256, init_std=0.08).eval()
    )
    with torch.no_grad():
        ids = torch.randint(0, 256, (2, 80), generator=torch.Generator().manual_seed(0))
        assert not torch.isfinite(model(ids)).all()
    with pytest.raises(FoldCheckError, match="logits are not finite"):
        fold_lm(model)
    folded = reparameterize_model(model)
    assert blockwise_fold_parity(model, folded) <= 5e-5
    with torch.no_grad():
        folded.layers[5].mlp.up_proj.bias[0] += 1e-2  # a fold that dropped a small shift term
    assert blockwise_fold_parity(model, folded) > 1e-4


def test_fold_lm_reports_parity_of_a_well_conditioned_model():
    model = randomize(tiny("sla", "prepbn"))
    folded, diff = fold_lm(model)
    assert diff is not None and diff <= 1e-5 and blockwise_fold_parity(model, folded) <= 1e-5
    assert fold_lm(tiny("sla", "rmsnorm"))[1] is None  # nothing to fold


def test_rmsnorm_model_lists_its_unfoldable_norms():
    model = tiny("gla", "rmsnorm")
    reasons = model.unfoldable_norms
    assert {"layers.0.norm1", "layers.0.norm2", "layers.1.attn.g_norm", "norm"} <= set(reasons)
    assert all("not" in r or "data-dependent" in r for r in reasons.values())
    deploy = reparameterize_model(model)
    assert sorted(remaining_norms(deploy)) == sorted(reasons)


@pytest.mark.parametrize("attention", MODELS)
def test_gradients_reach_every_parameter(attention):
    model = tiny(attention, "prepbn").train()
    set_progressive_schedule(model, step=11_000)  # both progressive branches active
    ids = torch.randint(0, 256, (4, 40))
    logits = model(ids[:, :-1])
    loss = nn.functional.cross_entropy(logits.reshape(-1, 256), ids[:, 1:].reshape(-1))
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_state_layout(attention):
    model = tiny(attention)
    shapes = []
    for t in (3, 130):
        _, state = model.prefill(torch.randint(0, 256, (2, t)))
        shapes.append([tuple(s.shape) for s in state])
        assert len(state) == len(model.state_names()) == len(model.state_spec())
    init = [tuple(s.shape) for s in model.init_state(2)]
    spec = model.state_spec()
    assert [(s["layer"], s["name"]) for s in spec] == [
        (int(n.split(".")[1]), n.split(".")[2]) for n in model.state_names()
    ]
    if attention == "softmax":
        assert shapes[0] != shapes[1] and shapes[1][0] == (2, 4, 130, 16)  # the KV cache grows
        assert spec[0]["shape"] == ["batch", 4, "past_len", 16]
    else:
        assert shapes[0] == shapes[1] == init  # constant-size recurrent state
        assert all(s["shape"][0] == "batch" and all(isinstance(d, int) for d in s["shape"][1:]) for s in spec)
    if attention == "sla":
        assert spec[0] == {"layer": 0, "name": "S", "shape": ["batch", 4, 16, 16], "dtype": "float32"}
        assert [s["name"] for s in spec[:3]] == ["S", "z", "conv"] and spec[2]["shape"] == ["batch", 64, 3]
    if attention == "gla":
        assert spec == [
            {"layer": i, "name": "S", "shape": ["batch", 4, 8, 16], "dtype": "float32"} for i in (0, 1)
        ]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("hybrid", list(HYBRIDS))
def test_hybrid_chunk_form_recurrent_form_and_token_steps_agree(hybrid, norm):
    """The same weights in chunk mode, in recurrent mode, and one token at a time from the empty state."""
    chunk = tiny(hybrid, norm)
    recurrent = SlabLM(dataclasses.replace(chunk.config, attn_mode="recurrent")).eval()
    recurrent.load_state_dict(chunk.state_dict(), strict=True)
    ids = torch.randint(0, 256, (2, 75), generator=torch.Generator().manual_seed(6))  # > one chunk of 64
    with torch.no_grad():
        full = chunk(ids)
        state, steps = chunk.init_state(2), []
        for t in range(ids.shape[1]):
            step_logits, state = chunk.step(ids[:, t], state)
            steps.append(step_logits[:, None])
        assert_rel_close(recurrent(ids), full, 1e-5, f"{hybrid}/{norm} recurrent")
    assert_rel_close(torch.cat(steps, 1), full, 1e-5, f"{hybrid}/{norm} steps")


#: state tensors of each mixer, written out (not taken from the layers)
STATE_NAMES = {"sla": ("S", "z", "conv"), "gla": ("S",), "softmax": ("k_cache", "v_cache")}


@pytest.mark.parametrize("hybrid", list(HYBRIDS))
def test_hybrid_state_mixes_constant_states_and_a_growing_kv_cache(hybrid):
    model = tiny(hybrid)
    linear = HYBRIDS[hybrid]["attention"]
    assert model.config.layer_attention() == (linear, linear, linear, "softmax")
    assert model.state_names() == [
        f"layers.{i}.{n}" for i, kind in enumerate((linear,) * 3 + ("softmax",)) for n in STATE_NAMES[kind]
    ]
    assert [type(layer.attn).__name__ for layer in model.layers][3] == "CausalSelfAttention"
    shapes = {}
    for t in (3, 130):
        _, state = model.prefill(torch.randint(0, 256, (2, t)))
        shapes[t] = dict(zip(model.state_names(), (tuple(s.shape) for s in state)))
    init = dict(zip(model.state_names(), (tuple(s.shape) for s in model.init_state(2))))
    for name, shape in shapes[130].items():
        if name.startswith("layers.3."):
            assert shape == (2, 4, 130, 16) and shapes[3][name] == (2, 4, 3, 16)  # the KV cache grows
        else:
            assert shape == shapes[3][name] == init[name]  # constant-size recurrent state
    spec = {f"layers.{e['layer']}.{e['name']}": e["shape"] for e in model.state_spec()}
    assert spec["layers.3.k_cache"] == spec["layers.3.v_cache"] == ["batch", 4, "past_len", 16]
    assert all("past_len" not in shape for name, shape in spec.items() if not name.startswith("layers.3."))
    _, state = model.prefill(torch.tensor([[1, 2, 3]]))
    bad = list(state)
    bad[-1] = torch.zeros(1, 4, 3, 8)  # a v_cache of the wrong head dim
    with pytest.raises(InputError, match="layers.3.v_cache"):
        model.prefill(torch.tensor([[4]]), state=bad)


def test_attention_pattern_repeats_over_the_depth_and_is_validated():
    config = slab_lm_config("tiny", attention="gla", attention_pattern="LS", num_layers=6)
    assert config.layer_attention() == ("gla", "softmax") * 3
    assert config.attention_label == "gla-LS" and slab_lm_config("tiny").attention_label == "gla"
    assert slab_lm_config("tiny", attention="sla").layer_attention() == ("sla", "sla")  # attention alone
    full = "LLLSLLLSLLLSLLLSLL"  # 18 letters spell out every layer of 350m
    assert slab_lm_config("350m", attention="sla", attention_pattern=full).layer_attention()[-3:] == (
        "softmax",
        "sla",
        "sla",
    )
    bad = [
        (dict(attention_pattern="LLLS"), "does not divide num_layers 2"),
        (dict(attention_pattern="LX"), r"L \(the gla layers\) or S \(softmax\); got 'X'"),
        (dict(attention_pattern="ls"), "got 'l', 's'"),
        (dict(attention_pattern=""), "non-empty string"),
        (dict(attention="softmax", attention_pattern="LS"), "needs attention sla or gla"),
        # per layer: GLA layers use gla_heads, so only the softmax layers need num_heads to divide dim
        (dict(attention_pattern="LS", num_heads=3), "softmax heads 3"),
        (dict(attention_pattern="LS", num_heads=8, dim=40), "even head dim"),
    ]
    for overrides, message in bad:
        with pytest.raises(InputError, match=message):
            slab_lm_config("tiny", **overrides)
    assert slab_lm_config("tiny", num_heads=3).attention == "gla"  # all-GLA: num_heads unused


def test_configs_without_a_pattern_load_from_old_metadata_unchanged():
    old = slab_lm_config("tiny", attention="sla").to_dict()
    del old["attention_pattern"]  # a dict written before hybrids existed
    assert SlabLMConfig.from_dict(old) == slab_lm_config("tiny", attention="sla")
    assert SlabLMConfig.from_dict(old).layer_attention() == ("sla", "sla")
    hybrid = slab_lm_config("tiny", num_layers=4, attention="sla", attention_pattern="LLLS")
    assert SlabLMConfig.from_dict(hybrid.to_dict()) == hybrid


def test_configs_match_the_papers_shapes():
    c350 = slab_lm_config("350m")
    assert (
        c350.dim,
        c350.num_layers,
        c350.num_heads,
        c350.ffn_dim,
        c350.vocab_size,
        c350.context_length,
    ) == (
        1024,
        18,
        8,
        4096,
        32000,
        2048,
    )
    assert not c350.tie_embeddings
    with torch.device("meta"):
        n350 = SlabLM(slab_lm_config("350m", attention="softmax")).num_params()
        n125 = SlabLM(slab_lm_config("125m", attention="gla")).num_params()
    layer = 4 * 1024 * 1024 + 3 * 1024 * 4096 + 2 * 1024  # attention, SwiGLU, two RMSNorms
    assert n350 == 18 * layer + 2 * 32000 * 1024 + 1024
    d = 768  # GLA: q, k d x d/2; v, output gate (+ bias), out d x d; W1 d x 16, W2 16 x d/2 (+ b); g_norm
    gla = d * d // 2 * 2 + 3 * d * d + d + d * 16 + 16 * d // 2 + d // 2 + d // 4
    assert (
        n125 == 12 * (gla + 3 * d * 2048 + 2 * d) + 2 * 32000 * d + d
    )  # 134M, 85M without embedding and head


def test_bad_input_gives_clear_errors():
    model = tiny("sla")
    with pytest.raises(InputError, match="empty"):
        model.prefill(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(InputError, match="vocabulary"):
        model.prefill(torch.tensor([[1, 256]]))
    with pytest.raises(InputError, match="integer"):
        model(torch.zeros(1, 4))
    _, state = model.prefill(torch.tensor([[1, 2]]))
    with pytest.raises(InputError, match="tensors"):
        model.step(torch.tensor([3]), state[:-1])
    bad = list(state)
    bad[1] = torch.zeros(1, 4, 15)
    with pytest.raises(InputError, match="layers.0.z"):
        model.prefill(torch.tensor([[1]]), state=bad)
    with pytest.raises(InputError, match="attention"):
        SlabLMConfig(attention="mamba").validate()
    with pytest.raises(InputError, match="unknown SLAB-LM config"):
        slab_lm_config("7b")
    with pytest.raises(InputError, match="override"):
        slab_lm_config("tiny", width=3)
    with pytest.raises(InputError, match="unknown SLAB-LM config keys"):
        SlabLMConfig.from_dict({"dim": 64, "colour": "red"})
    assert SlabLMConfig.from_dict(slab_lm_config("tiny").to_dict()) == slab_lm_config("tiny")
