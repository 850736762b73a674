"""The GPT model: config, causal self-attention, feed-forward, block, model, FLOP arithmetic.

Two families, each the same network as one that `transformers` loads, so weights map one-to-one
(gptcore.hf exports and imports them):

- `gpt2` (Radford et al. 2019; GPT2LMHeadModel): token + learned position embeddings,
  pre-LayerNorm blocks, 4x GELU feed-forward, final LayerNorm, biases optional;
- `llama` (Touvron et al. 2023; LlamaForCausalLM): rotary position embeddings on queries and keys
  (no position table), RMSNorm, SwiGLU feed-forward, no biases; with `qk_norm` each head's
  queries and keys are RMS-normalised before the rotation (Qwen3ForCausalLM).

Both: n_layer blocks x + attn(norm(x)), then x + mlp(norm(x)); multi-head causal self-attention
with one fused q/k/v projection and `scaled_dot_product_attention`, or an explicit masked-softmax
path that gives the same result (and returns the attention weights, for tests and inspection);
the output head tied to the token embedding unless `tie_embeddings` is false.

The family picks the norm, the feed-forward and the position encoding once, at construction;
forward passes do not branch on it.

`GPT.attention` picks the kernel a forward pass uses when the call does not: "sdpa" (the default)
or "explicit". Which trains faster is the machine's to say (on some CPUs the fused
kernel's bf16 backward is slow enough that the written-out product and softmax win; measured in
docs/results.md, "The reference run"), so `train.attention: auto` times both (gptcore.autotune).

- dropout on the embeddings and on each residual branch, not on the attention weights: dropping
  them forces PyTorch's unfused attention on CPU, a slower step (measured in docs/training.md,
  "The model") for a regulariser the residual dropout already provides;
- a KV cache for generation (`KVCache`): each block keeps the keys and values of the tokens seen,
  so a new token costs one position instead of the whole context;
- GPT-2 initialisation for both families: N(0, 0.02), residual output projections scaled by
  1/sqrt(2 * n_layer), norm gains 1.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

ARCHS = ("gpt2", "llama")
ATTENTION_KERNELS = ("sdpa", "explicit")  # GPT.attention: fused scaled_dot_product_attention, or written out
ACTIVATIONS = ("gelu", "gelu_tanh")


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = False
    arch: str = "gpt2"
    tie_embeddings: bool = True
    qk_norm: bool = False  # llama family only (Qwen3's per-head QK-norm)
    intermediate_size: int | None = None  # llama's SwiGLU width; None: 8/3 n_embd, rounded up to 64
    rope_theta: float = 10000.0  # llama family: base of the rotary frequencies
    norm_eps: float = 1e-5
    activation: str = "gelu"  # gpt2 family: exact GELU, or gelu_tanh (OpenAI's GPT-2 weights use it)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch {self.arch!r} is not one of {', '.join(ARCHS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.arch == "llama":
            # no transformers architecture has these combinations: they would not export
            if self.bias:
                raise ValueError("the llama family has no biases (bias must be false)")
            if self.head_dim % 2:
                raise ValueError(f"rotary embeddings need an even head size, got {self.head_dim}")
        elif self.qk_norm:
            raise ValueError("qk_norm belongs to the llama family (Qwen3); GPT-2 has none")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def ffn_hidden(self) -> int:
        """Width of the feed-forward's hidden layer: 4x for GELU; for SwiGLU 8/3x (the same
        parameter count with its third matrix), rounded up to a multiple of 64 for the matmuls."""
        if self.arch == "gpt2":
            return 4 * self.n_embd
        if self.intermediate_size is not None:
            return self.intermediate_size
        return 64 * math.ceil(8 * self.n_embd / 3 / 64)

    def to_dict(self) -> dict:
        """The config as plain values. Fields at their defaults that a gpt2-family model does not
        use are left out, so gpt2 model files are byte for byte what they were before the llama
        family existed (and still load in older gptcore)."""
        values = asdict(self)
        for field in fields(self):
            if field.name in _LATER_FIELDS and values[field.name] == field.default:
                del values[field.name]
        return values


# fields added with the llama family (see GPTConfig.to_dict)
_LATER_FIELDS = (
    "arch",
    "tie_embeddings",
    "qk_norm",
    "intermediate_size",
    "rope_theta",
    "norm_eps",
    "activation",
)


class KVCache:
    """Keys and values of the tokens a GPT has seen, per layer, for generation.

    Preallocated for `block_size` positions: `k` and `v` are (n_layer, B, n_head, block_size,
    head_dim), of which the first `length` positions are filled. `GPT.forward(idx, cache=...)`
    appends idx's keys and values and attends over everything cached.
    """

    def __init__(
        self,
        config: GPTConfig,
        batch_size: int,
        device: torch.device,
        dtype: torch.dtype,
        positions: int | None = None,
    ) -> None:
        # `positions`: storage for fewer than block_size, for a caller that knows how many it adds
        # (benchmark scoring); every position is written before attention reads it
        size = config.block_size if positions is None else positions
        shape = (config.n_layer, batch_size, config.n_head, size, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.block_size = config.block_size
        self.length = 0

    def reset(self) -> None:
        self.length = 0

    def rows(self, start: int, stop: int) -> KVCache:
        """A cache over rows start..stop-1 of this one, sharing its storage, empty (length 0).

        A server keeps one cache for every request it serves and works on some rows at a time:
        it fills one row with a new prompt, then steps the rows in use together."""
        view = copy.copy(self)
        view.k, view.v = self.k[:, start:stop], self.v[:, start:stop]
        view.length = 0
        return view


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (torch's own only drops both weight and bias)."""

    def __init__(self, ndim: int, bias: bool, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """Root-mean-square norm with a gain, no centring and no bias (Zhang & Sennrich 2019)."""

    def __init__(self, ndim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in the gain's dtype (fp32 master weights) whatever autocast hands it (bf16 queries under
        # QK-norm), as transformers does: the fused kernel wants one dtype, the mean square range
        return F.rms_norm(x.to(self.weight.dtype), self.weight.shape, self.weight, self.eps).to(x.dtype)


def make_norm(config: GPTConfig, ndim: int) -> nn.Module:
    if config.arch == "llama":
        return RMSNorm(ndim, config.norm_eps)
    return LayerNorm(ndim, config.bias, config.norm_eps)


class Rotary(nn.Module):
    """Rotary position embedding tables (Su et al. 2021), in the rotate-half layout that
    transformers' Llama uses, so exported q/k weights need no permutation."""

    cos: torch.Tensor  # buffers, registered in __init__
    sin: torch.Tensor

    def __init__(self, config: GPTConfig):
        super().__init__()
        dim = config.head_dim
        if torch.empty(0).is_meta:  # built under meta_device: shapes only, no values to compute
            cos, sin = torch.empty(config.block_size, dim), torch.empty(config.block_size, dim)
        else:
            inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
            freqs = torch.outer(torch.arange(config.block_size).float(), inv_freq)
            angles = torch.cat((freqs, freqs), dim=-1)  # (block_size, hs)
            cos, sin = angles.cos(), angles.sin()
        # derived from the config, not learned: left out of the state dict
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, start: int | torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The tables of positions start..start + length - 1 (length, hs); for a tensor `start`
        (B,) of one position per row (length 1), each row's own, (B, 1, 1, hs)."""
        if isinstance(start, torch.Tensor):
            return self.cos[start][:, None, None], self.sin[start][:, None, None]
        return self.cos[start : start + length], self.sin[start : start + length]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (i, i + hs/2) pair of x (B, nh, T, hs) by its position's angle."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


Rope = tuple[torch.Tensor, torch.Tensor]


class MultiHeadAttention(nn.Module):
    """Causal self-attention: all heads computed at once from one q/k/v projection.

    Positions enter through `rope` (the llama family's rotary tables for the tokens' positions)
    or not at all (gpt2's are in the embeddings); QK-norm, when configured, RMS-normalises each
    head's queries and keys first."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_scale = True  # type: ignore[assignment]  # marks it for the scaled GPT-2 init
        self.resid_dropout = nn.Dropout(config.dropout)
        if config.qk_norm:  # one gain per head dimension, shared by the heads (Qwen3)
            self.q_norm: nn.Module = RMSNorm(config.head_dim, config.norm_eps)
            self.k_norm: nn.Module = RMSNorm(config.head_dim, config.norm_eps)
        else:
            self.q_norm = self.k_norm = nn.Identity()

    def _heads(self, x: torch.Tensor, rope: Rope | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        shape = (B, T, self.n_head, C // self.n_head)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        return q, k, v

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        B, nh, T, hs = y.shape
        # (B, nh, T, hs) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, nh * hs)))

    def forward(
        self, x: torch.Tensor, rope: Rope | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Causal attention over x's tokens; with `mask` (B, 1, T, T), token i attends to the
        tokens j where mask[b, 0, i, j] is True instead (several sequences packed in one row)."""
        q, k, v = self._heads(x, rope)
        return self._merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None))

    def forward_cached(
        self,
        x: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        start: int | torch.Tensor,
        rope: Rope | None = None,
    ) -> torch.Tensor:
        """Attention for x's tokens at positions start.., over the cached keys and values
        (B, nh, block_size, hs) of positions ..start - 1, which it extends with x's own.

        `start` may be a tensor (B,) of positions, one per row, for one new token per row: rows
        of a batch that are at different lengths (requests that arrived at different times)."""
        q, k, v = self._heads(x, rope)
        T = x.shape[1]
        if isinstance(start, torch.Tensor):
            rows = torch.arange(x.shape[0], device=x.device)
            # (B, nh, 1, hs) -> (B, nh, hs) written at (row, :, start[row])
            keys[rows, :, start] = k[:, :, 0]
            values[rows, :, start] = v[:, :, 0]
            seen = int(start.max()) + 1
            # row b sees its own positions up to start[b]; a shorter row's tail is masked out
            mask = torch.arange(seen, device=x.device)[None, :] <= start[:, None]  # (B, seen)
            y = F.scaled_dot_product_attention(
                q, keys[:, :, :seen], values[:, :, :seen], attn_mask=mask[:, None, None, :]
            )
            return self._merge(y)
        keys[:, :, start : start + T] = k
        values[:, :, start : start + T] = v
        k, v = keys[:, :, : start + T], values[:, :, : start + T]
        if start == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif T == 1:  # the newest token sees every earlier one: no mask
            y = F.scaled_dot_product_attention(q, k, v)
        else:  # token i of x sees positions up to start + i
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self._merge(y)

    def forward_explicit(
        self, x: torch.Tensor, rope: Rope | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked-softmax attention written out; returns (output, weights of shape (B, nh, T, T))."""
        q, k, v = self._heads(x, rope)
        T = x.shape[1]
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1])
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        # the softmax in fp32 whatever the autocast dtype (as the fused kernels compute it); its
        # weights then meet the values in their dtype, bf16 under autocast
        weights = scores.masked_fill(~mask, float("-inf")).float().softmax(dim=-1).to(v.dtype)
        return self._merge(weights @ v), weights


class FeedForward(nn.Module):
    """Position-wise MLP of the gpt2 family: expand 4x, GELU, project back."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.ffn_hidden, bias=config.bias)
        self.c_proj = nn.Linear(config.ffn_hidden, config.n_embd, bias=config.bias)
        self.c_proj.residual_scale = True  # type: ignore[assignment]
        self.dropout = nn.Dropout(config.dropout)
        self.approximate = "tanh" if config.activation == "gelu_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate)))


class SwiGLUFeedForward(nn.Module):
    """Gated MLP of the llama family (Shazeer 2020): silu(x W_gate) * (x W_up), projected back.

    The gate and up matrices are one Linear (`c_fc`, gate rows first), one matmul instead of two;
    export splits it into transformers' gate_proj and up_proj."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 2 * config.ffn_hidden, bias=False)
        self.c_proj = nn.Linear(config.ffn_hidden, config.n_embd, bias=False)
        self.c_proj.residual_scale = True  # type: ignore[assignment]
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.c_fc(x).chunk(2, dim=-1)
        return self.dropout(self.c_proj(F.silu(gate) * up))


class Block(nn.Module):
    """One transformer block, pre-norm (LayerNorm for gpt2, RMSNorm for llama):

    x ─┬─ ln_1 ─ attn ─(+)─┬─ ln_2 ─ mlp ─(+)─> out
       └───────────────────┘└──────────────┘
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = MultiHeadAttention(config)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = SwiGLUFeedForward(config) if config.arch == "llama" else FeedForward(config)

    def forward(
        self,
        x: torch.Tensor,
        explicit: bool = False,
        kv: tuple[torch.Tensor, torch.Tensor, int | torch.Tensor] | None = None,
        rope: Rope | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.ln_1(x)
        if kv is not None:
            x = x + self.attn.forward_cached(h, *kv, rope=rope)
        elif mask is not None:
            x = x + self.attn(h, rope, mask)
        else:
            x = x + (self.attn.forward_explicit(h, rope)[0] if explicit else self.attn(h, rope))
        return x + self.mlp(self.ln_2(x))


_NORMAL = (torch.nn.init.normal_, torch.Tensor.normal_)  # the init function and the method it calls


class _NoRandomInitOnMeta(TorchFunctionMode):
    """Skips `normal_` on meta tensors: they hold no values to draw, and torch's meta kernel of
    `normal_` is a Python decomposition whose first call imports torch._dynamo, the compiler, which
    nothing else of an eager run needs and which takes longer to import than torch itself."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _NORMAL:
            tensor = args[0] if args else kwargs.get("tensor")  # nn.init passes it by name
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


@contextlib.contextmanager
def meta_device() -> Iterator[None]:
    """Build modules on the meta device: every shape, no memory, no values (for counts and shapes)."""
    with torch.device("meta"), _NoRandomInitOnMeta():
        yield


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        # positions: a learned table added to the embeddings (gpt2) or rotary tables (llama)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.arch == "gpt2" else None
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = make_norm(config, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf 2017)
        self.rotary = Rotary(config) if config.arch == "llama" else None
        # the attention kernel of a forward pass that does not name one (ATTENTION_KERNELS); a KV
        # cache's passes always use the fused kernel
        self.attention = "sdpa"
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            # residual projections add once per block, twice per layer: scale so the residual
            # stream's variance does not grow with depth (GPT-2 paper, section 2.3)
            std = (
                0.02 / math.sqrt(2 * self.config.n_layer)
                if getattr(module, "residual_scale", False)
                else 0.02
            )
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def zero_output_projections(self) -> None:
        """Set each block's output projections (attention's and the feed-forward's) to zero, so
        that every block starts as the identity and the residual stream as the embeddings (the
        init of modded-nanogpt's speedrun). Their gradients are not zero, so they learn from the
        first step; the matrices before them start learning from the second."""
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear) and getattr(module, "residual_scale", False):
                    module.weight.zero_()
                    if module.bias is not None:
                        module.bias.zero_()

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; the position table (gpt2) is left out by default, as in FLOP estimates."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding and self.wpe is not None else n

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        explicit: bool | None = None,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) for token ids (B, T); mean cross-entropy when targets are given.

        `explicit` forces the attention path (True: written out, False: fused); None: the one
        `self.attention` names, or the fused one with a cache.

        With `cache`, idx continues the tokens cached so far (positions cache.length ..), and
        their keys and values are added to it. With `positions` (B,) as well, idx is one token
        per row (B, 1) and row b's token sits at positions[b], after that row's cached tokens:
        the rows may be at different lengths; cache.length is left as it is."""
        logits = self.lm_head(self._trunk(idx, explicit, cache, positions))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The final norm's output (B, T, n_embd) for token ids (B, T): what lm_head reads,
        and what a task head (a classifier) reads instead of it. With `cache`, as `forward`'s:
        a caller that needs the logits of some positions only applies lm_head to those."""
        return self._trunk(idx, explicit=None, cache=cache)

    def packed_hidden_states(
        self, idx: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor
    ) -> torch.Tensor:
        """The final norm's output (B, T, n_embd) for rows of several sequences packed together:
        token t of row b is idx[b, t] at position positions[b, t] of its own sequence, and attends
        to the tokens j where allowed[b, t, j] is True (its sequence's earlier tokens). What a
        sequence computes does not depend on what else shares its row; a token that sees no
        other attends at least to itself."""
        if int(positions.max()) >= self.config.block_size:
            raise ValueError(f"position {int(positions.max())} exceeds block_size {self.config.block_size}")
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(positions)
        rope = None
        if self.rotary is not None:  # each token's own angles, (B, 1, T, hs) to broadcast over heads
            rope = (self.rotary.cos[positions][:, None], self.rotary.sin[positions][:, None])
        x = self.drop(x)
        mask = allowed[:, None]
        for block in self.h:
            x = block(x, rope=rope, mask=mask)
        return self.ln_f(x)

    def _trunk(
        self,
        idx: torch.Tensor,
        explicit: bool | None,
        cache: KVCache | None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embeddings, blocks and the final norm: (B, T) ids -> (B, T, n_embd)."""
        if explicit is None:
            explicit = cache is None and self.attention == "explicit"
        T = idx.shape[1]
        start: int | torch.Tensor  # declared apart so that mypy narrows it to int below
        start = cache.length if cache is not None else 0
        if positions is not None:
            if cache is None or T != 1 or positions.shape != (idx.shape[0],):
                raise ValueError("positions need a cache and idx of one token per row (B, 1)")
            start, pos, end = positions, positions[:, None], int(positions.max()) + 1  # pos: (B, 1)
        else:
            pos, end = torch.arange(start, start + T, device=idx.device), start + T
        if self.config.block_size < end:
            raise ValueError(f"sequence of {end} tokens exceeds block_size {self.config.block_size}")
        if cache is not None and explicit:
            raise ValueError("the explicit attention path does not use a KV cache")
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(pos)
        rope = self.rotary(start, T) if self.rotary is not None else None
        x = self.drop(x)
        for i, block in enumerate(self.h):
            kv = (cache.k[i], cache.v[i], start) if cache is not None else None
            x = block(x, explicit=explicit, kv=kv, rope=rope)
        if cache is not None and positions is None:
            cache.length = end
        return self.ln_f(x)


def flops_per_token(config: GPTConfig, n_params: int, training: bool = True) -> int:
    """Model FLOPs per token: 6N + 12*L*H*Q*T for training, a third of that forward only.

    2 FLOPs per multiply-add forward and 4 backward over the N non-position parameters, plus the
    attention scores and their weighted sum (QK^T and AV) at full context T (PaLM, appendix B).
    """
    head_dim = config.n_embd // config.n_head
    per_token = 6 * n_params + 12 * config.n_layer * config.n_head * head_dim * config.block_size
    return per_token if training else per_token // 3
