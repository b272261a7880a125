"""The static-state decode step (models/lm_decode_graph.py) on the CPU equals eager SlabLM.step.

The CUDA graph modes run on the GPU machine: tests/gpu/test_lm_decode_graph_gpu.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slab_edge.errors import InputError
from slab_edge.layers.reparam import reparameterize_model
from slab_edge.models.lm_decode_graph import (
    StaticDecoder,
    cached_decoder,
    decoder_for_generate,
    supports_static_decoding,
)
from slab_edge.models.slab_lm import create_slab_lm
from slab_edge.testing import LM_ATTENTION_CASES, assert_rel_close, randomize_norm_statistics

NORMS = ["rmsnorm", "prepbn", "prepbn-folded"]
PROMPT, STEPS = 19, 12
FP32_RTOL = 1e-5  # fused projections and in-place multiply-adds round differently, nothing more


def model_for(attention: str, norm: str = "rmsnorm", seed: int = 0) -> nn.Module:
    """Tiny model with weights large enough (init std 0.1) that every mixer moves the logits."""
    torch.manual_seed(seed)
    base_norm = "prepbn" if norm.startswith("prepbn") else norm
    model = create_slab_lm("tiny", norm=base_norm, init_std=0.1, **LM_ATTENTION_CASES[attention]).eval()
    if base_norm == "prepbn":
        randomize_norm_statistics(model, seed)  # RepBN starts as the zero map: give it real statistics
    return reparameterize_model(model) if norm == "prepbn-folded" else model


def eager_run(model, ids, steps):
    """Prefill ids [B, T], then `steps` greedy eager steps: (prefill state, fed tokens, logits, state)."""
    with torch.no_grad():
        logits, state = model.prefill(ids)
        start, token, fed, out = state, logits[:, -1].argmax(-1), [], []
        for _ in range(steps):
            fed.append(token)
            step_logits, state = model.step(token, state)
            out.append(step_logits)
            token = step_logits.argmax(-1)
    return start, fed, out, state


def static_run(decoder, start, length, fed):
    decoder.start(start, length)
    return [decoder.step(token).clone() for token in fed]


def prompt(batch=2, length=PROMPT, seed=1):
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("attention", LM_ATTENTION_CASES)
def test_static_step_equals_eager_step(attention, norm):
    model = model_for(attention, norm)
    start, fed, ref, ref_state = eager_run(model, prompt(), STEPS)
    decoder = StaticDecoder(model, batch_size=2, max_len=64, mode="static")
    got = static_run(decoder, start, PROMPT, fed)
    for i, (a, b) in enumerate(zip(got, ref)):
        assert_rel_close(a, b, FP32_RTOL, f"{attention}/{norm} logits of step {i}")
    got_state = decoder.state()
    assert len(got_state) == len(ref_state)
    for name, a, b in zip(model.state_names(), got_state, ref_state):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert_rel_close(a, b, FP32_RTOL, f"{attention}/{norm} {name}")


def test_static_kv_cache_equals_growing_cache_and_is_clean_behind_the_mask():
    model = model_for("softmax")
    start, fed, _, ref_state = eager_run(model, prompt(), STEPS)
    decoder = StaticDecoder(model, batch_size=2, max_len=40, mode="static")  # 48 slots: a multiple of 16
    decoder.start(tuple(torch.full_like(t, float("nan")) for t in start), PROMPT)  # garbage first...
    static_run(decoder, start, PROMPT, fed)  # ...then the real prompt state
    length = PROMPT + STEPS
    for layer in decoder.layers:
        k, v = layer.state[:2]
        assert k.shape[2] == 48 and (k[:, :, length:] == 0).all() and (v[:, :, length:] == 0).all()
    for name, a, b in zip(model.state_names(), decoder.state(), ref_state):
        assert a.shape == b.shape == (2, 4, length, 16), name  # the growing cache's length, not the buffer's
        assert_rel_close(a, b, FP32_RTOL, name)


def test_buffers_stay_in_place_and_a_restart_replays_exactly():
    """What a captured graph relies on: the step writes into the same memory, and start() resets it fully."""
    model = model_for("sla-LLLS")
    start, fed, _, _ = eager_run(model, prompt(), 6)
    decoder = StaticDecoder(model, batch_size=2, max_len=64, mode="static")
    addresses = [t.data_ptr() for t in decoder._buffers()]
    first = static_run(decoder, start, PROMPT, fed)
    second = static_run(decoder, start, PROMPT, fed)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert [t.data_ptr() for t in decoder._buffers()] == addresses
    # a different prompt through the same decoder, then the first one again
    other_start, other_fed, other_ref, _ = eager_run(model, prompt(seed=5), 6)
    for a, b in zip(static_run(decoder, other_start, PROMPT, other_fed), other_ref):
        assert_rel_close(a, b, FP32_RTOL, "second prompt")
    assert all(torch.equal(a, b) for a, b in zip(static_run(decoder, start, PROMPT, fed), first))


def test_start_from_empty_state_equals_eager_from_init_state():
    model = model_for("gla-LLLS")
    decoder = StaticDecoder(model, batch_size=1, max_len=16, mode="static")
    decoder.start(None)
    state, token = model.init_state(1), torch.tensor([7])
    with torch.no_grad():
        for _ in range(5):
            ref, state = model.step(token, state)
            assert_rel_close(decoder.step(token), ref, FP32_RTOL, "from the empty state")
            token = ref.argmax(-1)


@pytest.mark.parametrize("attention", LM_ATTENTION_CASES)
def test_compiled_step_traces_without_graph_breaks(attention):
    """fullgraph=True: a host sync or a Python branch on a tensor value in the step would fail here.
    aot_eager traces the graph (functionalised in-place updates included) without generating code."""
    model = model_for(attention, "prepbn")
    start, fed, ref, _ = eager_run(model, prompt(), 4)
    decoder = StaticDecoder(model, 2, max_len=32, mode="compile", compile_backend="aot_eager")
    for i, (a, b) in enumerate(zip(static_run(decoder, start, PROMPT, fed), ref)):
        assert_rel_close(a, b, FP32_RTOL, f"compiled {attention} step {i}")


@pytest.mark.slow
def test_generate_with_an_inductor_compiled_step_on_cpu():
    """torch.compile (inductor, C++ on the CPU) of every block kind and the head: greedy tokens unchanged."""
    torch._dynamo.reset()
    ids = prompt(2, 9)
    for attention in ("gla", "sla"):  # 1:1 hybrids: gla + softmax, then sla (softmax and head compiled)
        torch.manual_seed(0)
        model = create_slab_lm(
            "tiny", attention=attention, attention_pattern="LS", dim=32, ffn_dim=64, init_std=0.1
        ).eval()
        eager = model.generate(ids, 24)
        assert torch.equal(model.generate(ids, 24, compile_step=True), eager), attention
        built = cached_decoder(model, 2, 256, torch.float32, "compile")  # the one generate() built
        assert built.mode == "compile" and [layer.kind.name for layer in built.layers] == [
            attention,
            "softmax",
        ]


def test_bf16_autocast_decoding_mirrors_eager_autocast():
    """Under CPU bf16 autocast: bf16 GEMMs on bf16 weight copies, float32 states, bf16 logits, like eager."""
    model = model_for("sla-LLLS")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        start, fed, ref, _ = eager_run(model, prompt(), 8)
        decoder = StaticDecoder(model, 2, max_len=64, dtype=torch.bfloat16, mode="static")
        got = static_run(decoder, start, PROMPT, fed)
    assert got[0].dtype == ref[0].dtype == torch.bfloat16
    assert {t.dtype for t in decoder.state()} == {t.dtype for t in start}  # bf16 conv / KV, fp32 S and z
    for i, (a, b) in enumerate(zip(got, ref)):
        assert_rel_close(a, b, 2e-2, f"bf16 step {i}")  # bf16 rounding of differently fused GEMMs


@pytest.mark.parametrize("batch", [1, 3])
def test_bytes_per_step_count_every_weight_once(batch):
    model = model_for("gla-LLLS", "prepbn-folded")  # gla, gla, gla, softmax; dim 64, 4 heads
    decoder = StaticDecoder(model, batch, max_len=20, dtype=torch.bfloat16, mode="static")  # 32 slots
    counted = decoder.bytes_per_step()
    kept_fp32 = 3 * model.layers[0].attn.g_norm.weight.numel()  # GLA's output norm weights are not cast
    weights = 2 * (model.num_params(exclude_embedding=True) - kept_fp32) + 4 * kept_fp32
    assert counted["weights"] == weights + 4 * batch * 64  # + the embedding rows looked up (fp32 table)
    gla = 4 * 8 * 16 * 4  # S [B, 4, d_k / 4, d_v / 4] fp32
    kv = 2 * 4 * 32 * 16 * 2  # k and v [B, H, L_max, d] bf16
    assert counted["state"] == batch * (3 * gla + kv)
    sla = StaticDecoder(model_for("sla"), batch, mode="static").bytes_per_step()["state"]
    assert sla == batch * 2 * (4 * 16 * 16 * 4 + 4 * 16 * 4 + 64 * 3 * 4)  # S, z and conv, all fp32 here


def test_cached_decoder_is_reused_until_the_weights_change():
    model = model_for("gla")
    first = cached_decoder(model, 1, None, torch.float32, "static")
    assert cached_decoder(model, 1, None, torch.float32, "static") is first
    assert cached_decoder(model, 2, None, torch.float32, "static") is not first  # another batch size
    again = cached_decoder(model, 2, None, torch.float32, "static")
    with torch.no_grad():
        model.layers[0].mlp.up_proj.weight.add_(0.5)  # in place, as an optimizer step
    rebuilt = cached_decoder(model, 2, None, torch.float32, "static")
    assert rebuilt is not again
    start, fed, ref, _ = eager_run(model, prompt(), 3)
    for a, b in zip(static_run(rebuilt, start, PROMPT, fed), ref):  # sees the new weights
        assert_rel_close(a, b, FP32_RTOL, "after the weight change")


def test_generate_uses_eager_steps_on_cpu_unless_asked():
    model = model_for("sla")
    ids = prompt()
    assert decoder_for_generate(model, ids, 8, None, False) is None  # CPU default: eager steps
    assert decoder_for_generate(model, ids, 1, False, True) is None  # one new token needs no step
    with pytest.raises(InputError, match="cuda_graph=True needs the model on a CUDA device"):
        model.generate(ids, 4, cuda_graph=True)


def test_bad_input_gives_one_clear_error():
    model = model_for("gla-LLLS")
    start, _, _, _ = eager_run(model, prompt(), 0)
    decoder = StaticDecoder(model, 2, max_len=PROMPT + 2, mode="static")
    assert decoder.max_len == 32  # rounded up to a multiple of 16
    with pytest.raises(InputError, match="state has 3 tensors, this model needs 5"):
        decoder.start(start[:3], PROMPT)
    bad = list(start)
    bad[0] = bad[0][:, :2]  # GLA's S with two heads instead of four
    with pytest.raises(InputError, match=r"state tensor layers\.0\.S has shape \(2, 2, 8, 16\)"):
        decoder.start(tuple(bad), PROMPT)
    with pytest.raises(
        InputError, match=r"layers\.3\.k_cache has shape \(2, 4, 19, 16\).*expected \(2, 4, 18, 16\)"
    ):
        decoder.start(start, PROMPT - 1)  # the KV cache holds PROMPT positions
    with pytest.raises(InputError, match=r"length must be in \[0, 32\)"):
        decoder.start(start, 32)
    decoder.start(None)
    with pytest.raises(InputError, match=r"token must be integer ids of shape \(2,\)"):
        decoder.step(torch.tensor([1, 2, 3]))
    for _ in range(32):
        decoder.step(torch.tensor([1, 2]))
    with pytest.raises(InputError, match="static KV cache holds 32 tokens and is full"):
        decoder.step(torch.tensor([1, 2]))
    with pytest.raises(InputError, match="needs the model on a CUDA device"):
        StaticDecoder(model, 1, mode="graph")
    with pytest.raises(InputError, match="mode must be one of"):
        StaticDecoder(model, 1, mode="fast")
    with pytest.raises(InputError, match="eval-mode norms"):
        StaticDecoder(model.train(), 1, mode="static")


def test_unknown_mixer_is_named():
    model = create_slab_lm("tiny").eval()
    model.layers[1].attn = type("MyMixer", (nn.Module,), {})()
    with pytest.raises(InputError, match="no static decoding step for the token mixer MyMixer"):
        StaticDecoder(model, 1, mode="static")
    assert not supports_static_decoding(model)  # generate()'s default then steps eagerly, even on CUDA
    with pytest.raises(InputError, match="MyMixer"):  # asked for explicitly: an error
        decoder_for_generate(model, prompt(), 8, False, True)
