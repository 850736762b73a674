"""The GPT model: config, causal self-attention, feed-forward, block, model, FLOP arithmetic.

Architecture (GPT-2 shape, Radford et al. 2019):
- token + learned position embeddings, dropout;
- n_layer pre-LayerNorm blocks: x + attn(ln(x)), then x + mlp(ln(x));
- multi-head causal self-attention with one fused q/k/v projection and
  `scaled_dot_product_attention` (an explicit masked-softmax path gives the same result and
  returns the attention weights, for tests and inspection);
- dropout on the embeddings and on each residual branch, not on the attention weights: dropping
  them forces PyTorch's unfused attention on CPU, which made a 6-layer step 1.4x slower
  (benchmarks/train_speed.py) for a regulariser the residual dropout already provides;
- 4x GELU feed-forward; final LayerNorm; output head tied to the token embedding;
- a KV cache for generation (`KVCache`): each block keeps the keys and values of the tokens seen,
  so a new token costs one position instead of the whole context;
- GPT-2 initialisation: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * n_layer).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """Keys and values of the tokens a GPT has seen, per layer, for generation.

    Preallocated for `block_size` positions: `k` and `v` are (n_layer, B, n_head, block_size,
    head_dim), of which the first `length` positions are filled. `GPT.forward(idx, cache=...)`
    appends idx's keys and values and attends over everything cached.
    """

    def __init__(self, config: GPTConfig, batch_size: int, device: torch.device, dtype: torch.dtype) -> None:
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, config.n_embd // config.n_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.block_size = config.block_size
        self.length = 0

    def reset(self) -> None:
        self.length = 0


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (torch's own only drops both weight and bias)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class MultiHeadAttention(nn.Module):
    """Causal self-attention: all heads computed at once from one q/k/v projection."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_scale = True  # marks it for the scaled GPT-2 init
        self.resid_dropout = nn.Dropout(config.dropout)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        shape = (B, T, self.n_head, C // self.n_head)
        return tuple(t.view(shape).transpose(1, 2) for t in (q, k, v))

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        B, nh, T, hs = y.shape
        # (B, nh, T, hs) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, nh * hs)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(x)
        return self._merge(F.scaled_dot_product_attention(q, k, v, is_causal=True))

    def forward_cached(
        self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: int
    ) -> torch.Tensor:
        """Attention for x's tokens at positions start.., over the cached keys and values
        (B, nh, block_size, hs) of positions ..start - 1, which it extends with x's own."""
        q, k, v = self._heads(x)
        T = x.shape[1]
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

    def forward_explicit(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked-softmax attention written out; returns (output, weights of shape (B, nh, T, T))."""
        q, k, v = self._heads(x)
        T = x.shape[1]
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1])
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        return self._merge(weights @ v), weights


class FeedForward(nn.Module):
    """Position-wise MLP: expand 4x, GELU, project back."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_scale = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    """One transformer block, pre-LayerNorm:

    x ─┬─ ln_1 ─ attn ─(+)─┬─ ln_2 ─ mlp ─(+)─> out
       └───────────────────┘└──────────────┘
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.bias)
        self.attn = MultiHeadAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, config.bias)
        self.mlp = FeedForward(config)

    def forward(
        self,
        x: torch.Tensor,
        explicit: bool = False,
        kv: tuple[torch.Tensor, torch.Tensor, int] | None = None,
    ) -> torch.Tensor:
        h = self.ln_1(x)
        if kv is not None:
            x = x + self.attn.forward_cached(h, *kv)
        else:
            x = x + (self.attn.forward_explicit(h)[0] if explicit else self.attn(h))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = LayerNorm(config.n_embd, config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf 2017)
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

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; the position table is left out by default, as in FLOP estimates."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        explicit: bool = False,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) for token ids (B, T); mean cross-entropy when targets are given.

        With `cache`, idx continues the tokens cached so far (positions cache.length ..), and
        their keys and values are added to it."""
        T = idx.shape[1]
        start = cache.length if cache is not None else 0
        if self.config.block_size < start + T:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        if cache is not None and explicit:
            raise ValueError("the explicit attention path does not use a KV cache")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for i, block in enumerate(self.h):
            kv = (cache.k[i], cache.v[i], start) if cache is not None else None
            x = block(x, explicit=explicit, kv=kv)
        if cache is not None:
            cache.length = start + T
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """The final LayerNorm's output (B, T, n_embd) for token ids (B, T): what lm_head reads,
        and what a task head (a classifier) reads instead of it."""
        if idx.shape[1] > self.config.block_size:
            raise ValueError(f"sequence of {idx.shape[1]} tokens exceeds block_size {self.config.block_size}")
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        return self.ln_f(x)


def flops_per_token(config: GPTConfig, n_params: int, training: bool = True) -> int:
    """Model FLOPs per token: 6N + 12*L*H*Q*T for training, a third of that forward only.

    2 FLOPs per multiply-add forward and 4 backward over the N non-position parameters, plus the
    attention scores and their weighted sum (QK^T and AV) at full context T (PaLM, appendix B).
    """
    head_dim = config.n_embd // config.n_head
    per_token = 6 * n_params + 12 * config.n_layer * config.n_head * head_dim * config.block_size
    return per_token if training else per_token // 3
