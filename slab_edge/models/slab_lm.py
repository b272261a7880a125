"""SLAB-LM: a LLaMA-style decoder with selectable attention (sla | gla | softmax) and norm (rmsnorm | prepbn).

    ids [B, T] -> embed -> N x (x + attn(norm1(x)); x + SwiGLU(norm2(x))) -> norm -> head -> logits [B, T, V]

Attention per layer. `attention` alone is every layer's mixer. A hybrid adds `attention_pattern`, one letter
per layer in the SLAB paper's notation (its Swin is "LLSS"): L = the linear attention named by `attention`
(sla | gla), S = softmax attention. The pattern repeats over the depth, so its length must divide
`num_layers` (a pattern of `num_layers` letters spells out every layer). The 3:1 hybrids of the tests and
bench/lm_quality.py are overrides of "tiny":
    slab_lm_config("tiny", num_layers=4, attention="sla", attention_pattern="LLLS")   # sla:softmax 3:1
    slab_lm_config("tiny", num_layers=4, attention="gla", attention_pattern="LLLS")   # gla:softmax 3:1
(350m's 18 layers take e.g. "LLLLLS", 5:1, or "LLS", 2:1). `config.layer_attention()` lists the mixers.

Embeddings are untied by default (LLaMA-350M's `tie_word_embeddings: false`); `tie_embeddings=True` shares
the head with the embedding during training, and folding the final norm into the head unties them (the
folded head is W diag(a), no longer the embedding).

Norms. `rmsnorm`: LLaMA's RMSNorm everywhere (nothing to fold). `prepbn`: every norm — before attention,
before the MLP and the final one — is the paper's LLaMA PRepBN, RMSNorm fading into a zero-initialised RepBN
(official code: LinearNorm(norm1=RMSNorm, norm2=RepBN), where norm1/norm2 name its two branches, not the
block's two norms; see make_lm_norm). Folded, they vanish into q/k/v (and GLA's gate and output-gate
projections), SwiGLU's gate/up and the head; only GLA's per-head output RMSNorm stays
(`model.unfoldable_norms` lists what may stay, with the reason).

Recurrent state. The model's state is one flat tuple of tensors, layer after layer, each layer contributing
its own mixer's `state_names` (`model.state_names()` gives "layers.{i}.{name}", `model.state_spec()` layer,
name, shape and dtype for export metadata), so a hybrid mixes constant-size states and KV caches:
    sla      S [B, H, d, d] fp32, z [B, H, d] fp32, conv [B, C, W-1]        constant in T
    gla      S [B, 4, d_k/4, d/4] fp32                                      constant in T
    softmax  k_cache, v_cache [B, H, L, d]                                  grows with T
`prefill(ids)` runs the chunkwise form over the prompt and returns (logits, state); `step(token, state)`
runs the recurrent form for one token. `generate()` is Hugging Face-like, on top of these; on CUDA it steps
with a static-state copy of `step` captured in a CUDA graph (models/lm_decode_graph.py).

Usage:
    model = SlabLM(slab_lm_config("tiny", attention="gla", norm="prepbn"))
    logits = model(ids)                                   # training: [B, T, V]
    logits, state = model.prefill(ids)                    # [B, T, V], flat state tuple
    next_logits, state = model.step(next_token, state)    # [B] -> [B, V]
    out = model.generate(ids, max_new_tokens=64, do_sample=True, top_p=0.9)
    deploy = reparameterize_model(model)                  # PRepBN folded into q/k/v, gate/up, head
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from slab_edge.errors import InputError
from slab_edge.layers.lm_blocks import ATTENTION_TYPES, LM_NORM_TYPES, SlabLMBlock, make_lm_norm
from slab_edge.layers.norms import norm_affine
from slab_edge.layers.reparam import FoldCheckError, absorb_into_following, is_folded, reparameterize_model
from slab_edge.models.lm_decode_graph import decoder_for_generate
from slab_edge.ops.backend import MODES

__all__ = [
    "SLAB_LM_CONFIGS",
    "SlabLM",
    "SlabLMConfig",
    "blockwise_fold_parity",
    "create_slab_lm",
    "fold_lm",
    "sample_next_token",
    "slab_lm_config",
]

State = tuple[torch.Tensor, ...]

#: attention_pattern letters: L = the linear attention named by `attention`, S = softmax attention
PATTERN_LETTERS = ("L", "S")


@dataclass
class SlabLMConfig:
    """Hyper-parameters of SLAB-LM; defaults are the CI-sized byte-level model."""

    vocab_size: int = 256  # bytes: the embedded default corpus is byte-level
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 4  # heads of sla / softmax attention
    ffn_dim: int = 192  # SwiGLU hidden width (LLaMA: ~8/3 dim)
    attention: str = "gla"  # sla | gla | softmax: every layer's mixer, or the L layers' of attention_pattern
    attention_pattern: str | None = None  # hybrids, e.g. "LLLS": L = `attention`, S = softmax (see top)
    norm: str = "rmsnorm"  # rmsnorm | prepbn
    context_length: int = 2048  # training / export length; nothing in the model limits T
    tie_embeddings: bool = False  # LLaMA-350M: untied
    norm_eps: float = 1e-6  # LLaMA-350M rms_norm_eps (also the PRepBN BatchNorm eps, as officially)
    conv_size: int = 4  # causal SLA: kernel of the short conv on v
    gla_heads: int = 4  # GLA paper: 4 heads whatever the width
    gla_expand_k: float = 0.5  # GLA paper: d_k = d / 2
    gla_gate_low_rank_dim: int = 16  # GLA paper: W1 d x 16, W2 16 x d_k
    rope_base: float = 10_000.0  # softmax baseline only
    prepbn_warmup_steps: int = 10_000  # paper's LLaMA: RMSNorm only for 10k optimizer steps...
    prepbn_decay_steps: int = 18_000  # ...then fading into RepBN over 18k steps
    init_std: float = 0.02  # LLaMA initializer_range
    attn_mode: str = "auto"  # auto (fla kernels on CUDA when installed) | chunk | recurrent | fla

    def validate(self) -> SlabLMConfig:
        """Raise InputError naming the first inconsistent field; returns self."""
        if self.attention not in ATTENTION_TYPES:
            raise InputError(f"attention must be one of {', '.join(ATTENTION_TYPES)}, got {self.attention!r}")
        if self.norm not in LM_NORM_TYPES:
            raise InputError(f"norm must be one of {', '.join(LM_NORM_TYPES)}, got {self.norm!r}")
        if self.attn_mode not in MODES:
            raise InputError(f"attn_mode must be one of {', '.join(MODES)}, got {self.attn_mode!r}")
        for name in ("vocab_size", "dim", "num_layers", "num_heads", "ffn_dim", "conv_size", "gla_heads"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        self._validate_pattern()
        kinds = set(self.layer_attention())
        for kind in ATTENTION_TYPES:
            if kind not in kinds:
                continue
            heads = self.gla_heads if kind == "gla" else self.num_heads
            if self.dim % heads:
                raise InputError(f"dim {self.dim} is not divisible by the {kind} heads {heads}")
            if kind == "gla" and (self.dim * self.gla_expand_k) % heads:
                raise InputError(
                    f"GLA key dim {self.dim * self.gla_expand_k} is not divisible by gla_heads {heads}"
                )
            if kind == "softmax" and (self.dim // heads) % 2:
                raise InputError(
                    f"softmax attention needs an even head dim for RoPE, got {self.dim // heads}"
                )
        return self

    def _validate_pattern(self) -> None:
        pattern = self.attention_pattern
        if pattern is None:
            return
        if not isinstance(pattern, str) or not pattern:
            raise InputError(
                f"attention_pattern must be a non-empty string of L and S (or unset), got {pattern!r}"
            )
        bad = sorted(set(pattern) - set(PATTERN_LETTERS))
        if bad:
            raise InputError(
                f"attention_pattern {pattern!r}: one letter per layer, L (the {self.attention} layers) or "
                f"S (softmax); got {', '.join(map(repr, bad))}"
            )
        if self.attention == "softmax":
            raise InputError(
                "attention_pattern needs attention sla or gla (the mixer of its L layers), got 'softmax'"
            )
        if self.num_layers % len(pattern):
            raise InputError(
                f"attention_pattern {pattern!r} has {len(pattern)} letters, which does not divide "
                f"num_layers {self.num_layers} (the pattern repeats over the depth)"
            )

    def layer_attention(self) -> tuple[str, ...]:
        """Each layer's mixer (sla | gla | softmax): `attention`, or attention_pattern repeated over depth."""
        if self.attention_pattern is None:
            return (self.attention,) * self.num_layers
        letters = self.attention_pattern * (self.num_layers // len(self.attention_pattern))
        return tuple(self.attention if letter == "L" else "softmax" for letter in letters)

    @property
    def attention_label(self) -> str:
        """`attention`, or "{attention}-{pattern}" for a hybrid (for run folders and model names)."""
        if self.attention_pattern is None:
            return self.attention
        return f"{self.attention}-{self.attention_pattern}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> SlabLMConfig:
        """Config from a dict (e.g. checkpoint metadata); unknown keys raise InputError, missing ones keep
        their defaults (dicts written before a field existed load unchanged)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown SLAB-LM config keys: {', '.join(unknown)}")
        return cls(**values).validate()


#: Named shapes. 350m is the paper's LLaMA-350M (1024 hidden, 18 layers, 8 heads, FFN 4096, vocab 32000,
#: context 2048); 125m the GPT-3/Pythia-125M width and depth with LLaMA's 8/3 FFN and the same vocab.
SLAB_LM_CONFIGS: dict[str, SlabLMConfig] = {
    "tiny": SlabLMConfig(),
    "125m": SlabLMConfig(vocab_size=32000, dim=768, num_layers=12, num_heads=12, ffn_dim=2048),
    "350m": SlabLMConfig(vocab_size=32000, dim=1024, num_layers=18, num_heads=8, ffn_dim=4096),
}


def slab_lm_config(name: str, **overrides) -> SlabLMConfig:
    """A named config (tiny | 125m | 350m) with field overrides, validated."""
    if name not in SLAB_LM_CONFIGS:
        raise InputError(f"unknown SLAB-LM config {name!r}; known: {', '.join(SLAB_LM_CONFIGS)}")
    try:
        config = dataclasses.replace(SLAB_LM_CONFIGS[name], **overrides)
    except TypeError as err:  # an unknown field name
        raise InputError(f"bad SLAB-LM config override: {err}") from None
    return config.validate()


class SlabLM(nn.Module):
    """SLAB-LM decoder. See the module docstring for the state layout and the API.

    Args:
        config: the hyper-parameters (validated).
        deploy: build the folded (reparameterized) graph: PRepBN norms as Identity, absorbing Linears and
            the head with biases, head untied. Equal to `reparameterize_model(model)`'s structure, so its
            state dict loads strictly. For RMSNorm models nothing is foldable and deploy changes nothing.
    """

    def __init__(self, config: SlabLMConfig | None = None, deploy: bool = False) -> None:
        super().__init__()
        self.config = config = (config or SlabLMConfig()).validate()
        folded = deploy and config.norm == "prepbn"
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(
            SlabLMBlock(
                config.dim,
                config.num_heads,
                config.ffn_dim,
                attention=attention,
                norm=config.norm,
                deploy=deploy,
                norm_eps=config.norm_eps,
                prepbn_warmup_steps=config.prepbn_warmup_steps,
                prepbn_decay_steps=config.prepbn_decay_steps,
                conv_size=config.conv_size,
                gla_heads=config.gla_heads,
                gla_expand_k=config.gla_expand_k,
                gla_gate_low_rank_dim=config.gla_gate_low_rank_dim,
                rope_base=config.rope_base,
                mode=config.attn_mode,
            )
            for attention in config.layer_attention()
        )
        self.norm = (
            nn.Identity()
            if folded
            else make_lm_norm(
                config.norm,
                config.dim,
                config.norm_eps,
                config.prepbn_warmup_steps,
                config.prepbn_decay_steps,
            )
        )
        self.head = nn.Linear(config.dim, config.vocab_size, bias=folded)
        self.apply(self._init_weights)
        if config.tie_embeddings and not folded:
            self.head.weight = self.embed.weight

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ state layout

    def _state_keys(self) -> list[tuple[int, str]]:
        return [(i, name) for i, layer in enumerate(self.layers) for name in layer.attn.state_names]

    def state_names(self) -> list[str]:
        """Names of the flat state tensors, in order: "layers.{i}.{S|z|conv|k_cache|v_cache}"."""
        return [f"layers.{i}.{name}" for i, name in self._state_keys()]

    def init_state(self, batch_size: int, device=None, dtype: torch.dtype | None = None) -> State:
        """The empty flat state (zeros; an empty KV cache for softmax). dtype: of conv / KV tensors."""
        device = device if device is not None else self.embed.weight.device
        return tuple(
            t for layer in self.layers for t in layer.init_state(batch_size, device=device, dtype=dtype)
        )

    def state_spec(self) -> list[dict]:
        """[{layer, name, shape, dtype}] of the flat state, in order, for export metadata.

        Symbolic dims are strings: "batch", and "past_len" for the KV-cache length (softmax only).
        """
        example = self.init_state(1, device="meta")
        spec = []
        for (layer, name), tensor in zip(self._state_keys(), example):
            shape: list[int | str] = ["batch", *tensor.shape[1:]]
            if name.endswith("_cache"):
                shape[2] = "past_len"
            spec.append(
                {
                    "layer": layer,
                    "name": name,
                    "shape": shape,
                    "dtype": str(tensor.dtype).replace("torch.", ""),
                }
            )
        return spec

    def split_state(self, state: Sequence[torch.Tensor]) -> list[State]:
        """Per-layer tuples from the flat state; InputError if the count does not match."""
        counts = [len(layer.attn.state_names) for layer in self.layers]
        if len(state) != sum(counts):
            raise InputError(
                f"state has {len(state)} tensors, this model needs {sum(counts)} ({self.state_names()})"
            )
        out, start = [], 0
        for n in counts:
            out.append(tuple(state[start : start + n]))
            start += n
        return out

    def check_state(self, state: Sequence[torch.Tensor], batch_size: int) -> None:
        """InputError unless `state` has this model's layout for `batch_size` (KV-cache lengths free)."""
        expected = self.init_state(batch_size, device="meta")
        self.split_state(state)  # count
        for name, got, want in zip(self.state_names(), state, expected):
            shape_ok = got.dim() == want.dim() and all(
                g == w or (name.endswith("_cache") and i == 2)
                for i, (g, w) in enumerate(zip(got.shape, want.shape))
            )
            if not shape_ok or not got.is_floating_point():
                raise InputError(
                    f"state tensor {name} has shape {tuple(got.shape)} and dtype {got.dtype}; "
                    f"expected {tuple(want.shape)} floating point"
                )

    # ------------------------------------------------------------------ forward

    def forward(
        self, input_ids: torch.Tensor, state: Sequence[torch.Tensor] | None = None, use_cache: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, State]:
        """Logits [B, T, V] for input_ids [B, T] (chunkwise form), continuing from `state` if given.

        Returns (logits, new flat state) when use_cache, else logits.
        """
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int32, torch.int64):
            raise InputError(
                f"input_ids must be an integer tensor [B, T], got {input_ids.dtype} {tuple(input_ids.shape)}"
            )
        layer_states = self.split_state(state) if state is not None else [None] * len(self.layers)
        x = self.embed(input_ids)  # [B, T, C]
        new_state: list[torch.Tensor] = []
        for layer, layer_state in zip(self.layers, layer_states):
            x, s = layer(x, layer_state, output_final_state=use_cache)
            if use_cache:
                new_state.extend(s)
        logits = self.head(self.norm(x))  # [B, T, V]
        return (logits, tuple(new_state)) if use_cache else logits

    def _check_ids(self, ids: torch.Tensor, what: str) -> None:
        if ids.numel() == 0:
            raise InputError(f"{what} is empty")
        if ids.dtype not in (torch.long, torch.int32, torch.int64):
            raise InputError(f"{what} must be integer token ids, got {ids.dtype}")
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= self.config.vocab_size:
            raise InputError(
                f"{what} has token ids in [{low}, {high}], outside the vocabulary "
                f"[0, {self.config.vocab_size})"
            )

    def prefill(
        self, input_ids: torch.Tensor, state: Sequence[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, State]:
        """Run a prompt [B, T] in parallel (chunkwise form): (logits [B, T, V], flat state after it)."""
        self._check_ids(input_ids, "prompt")
        if state is not None:
            self.check_state(state, input_ids.shape[0])
        return self.forward(input_ids, state, use_cache=True)

    def step(self, token: torch.Tensor, state: Sequence[torch.Tensor]) -> tuple[torch.Tensor, State]:
        """One decoding step (recurrent form): token [B] and flat state -> (logits [B, V], new flat state)."""
        if token.dim() != 1:
            raise InputError(f"token must be [B], got shape {tuple(token.shape)}")
        x = self.embed(token)  # [B, C]
        new_state: list[torch.Tensor] = []
        for layer, layer_state in zip(self.layers, self.split_state(state)):
            x, s = layer.step(x, layer_state)
            new_state.extend(s)
        return self.head(self.norm(x)), tuple(new_state)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        cuda_graph: bool | None = None,
        compile_step: bool = False,
    ) -> torch.Tensor:
        """Hugging Face-like generation: prefill the prompt, then step token by token (runs in eval mode).

        Args:
            input_ids: [B, T] prompt (T >= 1).
            max_new_tokens: tokens to add at most.
            do_sample: sample (with temperature / top_k / top_p) instead of greedy argmax.
            temperature, top_k, top_p: sampling filters (see sample_next_token).
            eos_token_id: a token id (or ids) that ends a sequence; finished sequences are padded with it,
                and generation stops early once every sequence has finished.
            generator: torch.Generator for reproducible sampling.
            cuda_graph: decode with a static-state step captured in a CUDA graph (models.lm_decode_graph);
                None: on for a CUDA model with batch <= MAX_GRAPH_BATCH. Prefill stays the chunk form.
            compile_step: torch.compile the static step first (slow to start, fuses the elementwise ops).

        Returns:
            [B, T + n] prompt followed by n <= max_new_tokens generated ids.
        """
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        if max_new_tokens < 0:
            raise InputError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
        was_training = self.training
        self.eval()
        try:
            logits, state = self.prefill(input_ids)
            next_logits = logits[:, -1]
            decoder = decoder_for_generate(self, input_ids, max_new_tokens, cuda_graph, compile_step)
            if decoder is not None:
                decoder.start(state, input_ids.shape[1])
            finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            pieces = [input_ids]
            for i in range(max_new_tokens):
                token = sample_next_token(next_logits, do_sample, temperature, top_k, top_p, generator)
                if eos:
                    token = torch.where(finished, torch.full_like(token, eos[0]), token)
                    finished |= torch.isin(token, torch.tensor(eos, device=token.device))
                pieces.append(token[:, None])
                if (eos and bool(finished.all())) or i == max_new_tokens - 1:
                    break
                if decoder is None:
                    next_logits, state = self.step(token, state)
                else:
                    next_logits = decoder.step(token)
        finally:
            self.train(was_training)
        return torch.cat(pieces, dim=1)

    # ------------------------------------------------------------------ folding

    @property
    def unfoldable_norms(self) -> dict[str, str]:
        """Norms `reparameterize_model` may leave, with the reason (it checks that no other norm is left)."""
        reasons: dict[str, str] = {}
        names = [name for name, _ in self.named_modules()]
        for i in range(len(self.layers)):
            prefix = f"layers.{i}"
            if f"{prefix}.attn.g_norm" in names:
                reasons[f"{prefix}.attn.g_norm"] = (
                    "GLA per-head RMSNorm of the attention output: data-dependent scale"
                )
            for norm in ("norm1", "norm2"):
                if isinstance(self.layers[i].get_submodule(norm), nn.RMSNorm):
                    reasons[f"{prefix}.{norm}"] = (
                        "RMSNorm divides by a data-dependent RMS: not affine, not foldable"
                    )
        if isinstance(self.norm, nn.RMSNorm):
            reasons["norm"] = "RMSNorm divides by a data-dependent RMS: not affine, not foldable"
        return reasons

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold an eval-affine final norm (PRepBN) into the LM head, untying it from the embedding first.

        The blocks fold their own norms (SlabLMBlock.reparameterize); reparameterize_model calls both.
        """
        if is_folded(self.norm) or norm_affine(self.norm) is None:
            return
        if self.head.weight is self.embed.weight:
            self.head.weight = nn.Parameter(self.embed.weight.detach().clone())
        absorb_into_following(self.norm, self.head)
        self.norm = nn.Identity()

    def num_params(self, exclude_embedding: bool = False) -> int:
        """Parameter count (shared tensors once); optionally without the token embedding."""
        seen = {id(p): p for p in self.parameters()}
        total = sum(p.numel() for p in seen.values())
        return total - self.embed.weight.numel() if exclude_embedding else total


def sample_next_token(
    logits: torch.Tensor,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids [B] from logits [B, V]: argmax, or a sample after temperature, top-k and top-p.

    top_k keeps the k most likely tokens; top_p keeps the smallest set of most likely tokens whose
    probability reaches p (always at least one).
    """
    if not do_sample:
        return logits.argmax(dim=-1)
    if temperature <= 0:
        raise InputError(f"temperature must be > 0 when sampling, got {temperature}")
    if top_k is not None and top_k < 1:
        raise InputError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p must be in (0, 1], got {top_p}")
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # mass before this token already reaches p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def create_slab_lm(name: str = "tiny", deploy: bool = False, **overrides) -> SlabLM:
    """SlabLM from a named config (tiny | 125m | 350m) with field overrides, e.g. attention="sla"."""
    return SlabLM(slab_lm_config(name, **overrides), deploy=deploy)


@torch.no_grad()
def fold_lm(model: SlabLM, prompt: torch.Tensor | None = None) -> tuple[SlabLM, float | None]:
    """(folded eval-mode copy, max |logit diff| folded vs unfolded on `prompt`); None: nothing to fold.

    `prompt` [B, T] defaults to two random prompts of 80 tokens.

    Raises:
        FoldCheckError: the unfolded model's logits are not finite, so no parity can be measured: its
            BatchNorm statistics do not match its activations (recalibrate them first).
    """
    model = model.eval()
    foldable = any(norm_affine(m) is not None for m in model.modules())
    folded = reparameterize_model(model)
    if not foldable:
        return folded, None
    if prompt is None:
        prompt = torch.randint(
            0, model.config.vocab_size, (2, 80), generator=torch.Generator().manual_seed(0)
        )
    prompt = prompt.to(model.embed.weight.device)
    reference = model(prompt)
    if not torch.isfinite(reference).all():
        raise FoldCheckError(
            "the unfolded model's logits are not finite, so the fold cannot be checked: its BatchNorm "
            "statistics do not match its activations (recalibrate them with "
            "slab_edge.train.recalibrate.recalibrate_bn)"
        )
    return folded, float((reference - folded(prompt)).abs().max())


@torch.no_grad()
def blockwise_fold_parity(
    model: SlabLM, folded: SlabLM, tokens: int = 32, batch: int = 2, seed: int = 0
) -> float:
    """Largest relative error of any fold, each checked on its own inputs.

    Every block, and the final norm + head, of `model` and of its folded copy get the same hidden states
    h ~ N(0, 1) [batch, tokens, C] (on the models' device, in the caller's autocast): the result is the max
    over them of max |folded(h) - unfolded(h)| / max |unfolded(h)|. Unlike a whole-model comparison this
    stays well conditioned when the model's own activations are not: an untrained PRepBN stack with random
    BatchNorm statistics normalises nothing per token, and its residual stream grows layer after layer
    until it overflows (see bench/lm_decode_torch.py).
    """
    if len(model.layers) != len(folded.layers):
        raise InputError(f"{len(model.layers)} blocks vs {len(folded.layers)} in the folded model")
    device = model.embed.weight.device
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0

    def relative_error(reference: torch.Tensor, candidate: torch.Tensor) -> float:
        reference, candidate = reference.float(), candidate.float()
        scale, err = float(reference.abs().max()), float((reference - candidate).abs().max())
        return err / scale if scale > 0 and err == err else float("inf")  # NaN counts as a failure

    # (unfolded, folded) callables [B, T, C] -> output: every block, then the final norm + head
    parts = [(lambda h, a=a: a(h)[0], lambda h, b=b: b(h)[0]) for a, b in zip(model.layers, folded.layers)]
    parts.append((lambda h: model.head(model.norm(h)), lambda h: folded.head(folded.norm(h))))
    for unfolded_part, folded_part in parts:
        h = torch.randn(batch, tokens, model.config.dim, generator=gen).to(device)
        worst = max(worst, relative_error(unfolded_part(h), folded_part(h)))
    return worst
