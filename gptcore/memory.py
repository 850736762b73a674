"""The memory plan (bytes one training process needs, by what holds them, and whether they fit),
the measurement it is checked against, and activation checkpointing.

`plan_memory` sizes weights, gradients, optimizer state and activations for a model shape, a
batch, a precision, a parallel mode (`ddp` keeps everything whole on each process, `fsdp` shards
the first three over the processes) and activation checkpointing. `gptcore info` prints it, and
the train stage prints it before step 0 and stops there when it does not fit, saying what would.

The model's family and shape enter through its parameters, counted exactly on the meta device
(`Sizes`: llama's SwiGLU width, no position table, an untied head), and through the activations
each family's layers keep (`per_token`). What is counted, per process, with N parameters (a tied
head counted once) and W processes:
- weights: fp32 master weights, 4N bytes; under fsdp this process's shard of each tensor
  (FSDP2 shards dim 0, padded to a multiple of W, so a shard is ceil(rows / W) rows);
- working copies: weights the compute uses besides the masters. With bf16 autocast (ddp or one
  process) the bf16 cast of every Linear layer's weights is kept for the backward pass, 2 bytes
  each (embeddings and norms are not cast; a tied head is cast once, as the head); under fsdp
  the unsharded parameters all-gathered for compute, in the compute dtype: the root module's
  (embeddings, final norm, an untied head), which stay gathered from forward to backward, and
  two blocks (the one computing and the one prefetched);
- gradients: fp32, 4N (DDP's buckets are views of them, `gradient_as_bucket_view`); under fsdp
  this process's shard plus one block's unsharded gradients before their reduce-scatter;
- optimizer: AdamW's two fp32 moments, 8N, sharded like the weights under fsdp; with
  train.optimizer: muon, Muon's one fp32 momentum (4 bytes) for the blocks' matrices it owns;
- activations: what autograd keeps of one micro-batch (this process's rows) for the backward pass,
  and the loss's gradients as it starts, `peak_activation_bytes`.
Fine-tuning (`trainable`: one process, fp32) keeps gradients and AdamW's moments for the trained
parameters only; with LoRA those are the adapters (`adapters` parameters, beside the frozen
weights), whose activations add a few values a token (`adapter_per_token`, gptcore.finetune.lora).
The frozen projections' inputs are still counted as kept, though a frozen matmul needs none for a
weight gradient: the plan errs on the side of too much there.
Not counted: the CUDA context, the allocator's cached and fragmented blocks, and temporaries that
live within one operation; `HEADROOM` leaves room for them. On CUDA the train stage logs the plan
beside `torch.cuda.max_memory_allocated` after the first steps.
"""

from __future__ import annotations

import functools
import gc
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.checkpoint import checkpoint

from gptcore.model import GPT, GPTConfig, meta_device
from gptcore.optimizers import hidden_matrices

# the share of a device's memory a plan may fill: the rest is for what the plan leaves out
HEADROOM = 0.9


@dataclass(frozen=True)
class PerToken:
    """Activation bytes per token of a micro-batch, by where they are kept (`per_token`)."""

    block: int  # what one block saves for its backward pass
    block_input: int  # what a checkpointed block keeps instead: its input, the fp32 residual stream
    outside: int  # what is saved outside the blocks, the logits and their log-softmax included
    loss_gradients: int  # the gradients of those two, alive as the backward pass starts
    logits: int  # the logits the forward pass returns, which the loop holds until the step ends


def per_token(config: GPTConfig, bf16: bool = False, explicit: bool = False) -> PerToken:
    """What autograd keeps per token, counted for each family from the tensors it saves.

    Follows the breakdown of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
    Transformer Models", section 4.1); C = n_embd, F = the feed-forward's hidden width
    (`GPTConfig.ffn_hidden`: 4C for gpt2, SwiGLU's intermediate size for llama), H = n_head,
    V = vocab_size. In fp32 (4 bytes a value), as torch 2.13's CPU kernels save them:
    - gpt2 block: 8C + 2F values: each LayerNorm's input and output (the next matmul's input),
      2 x 2C; the fused q, k, v (3C) and the attention's output (C); the GELU's input and output
      (2F); LayerNorm's mean and inverse deviation, 2 values a norm;
    - llama block: 12C + 4F values: each RMSNorm's input, normalised input and output, 2 x 3C; q,
      k, v (3C), the rotated queries and keys (2C; the rotation's cos and sin tables are buffers)
      and the attention's output (C); SwiGLU's gate and up projections (2F), the gate's SiLU (F)
      and the product (F); one inverse RMS a norm. With qk_norm, 3C + 2H more (each head's
      normalised queries and keys, measured);
    - both: `scaled_dot_product_attention`'s fused kernel keeps one log-sum-exp per head (H),
      never the T x T weights (the model drops no attention weights); the explicit kernel
      (`explicit`, GPT.attention) keeps instead each head's row of softmax weights (H x T), in
      fp32, and under bf16 autocast their bf16 copy too (and a T x T mask per block, T / batch
      bytes a token, left out); with dropout, the masks of the two
      residual branches, which the CPU keeps as fp32 (2C);
    - outside the blocks: the final norm's saved values and the head's input (2C, llama's RMSNorm
      3C), the embedding dropout mask (C, with dropout), the logits (alive until the loss is
      taken) and their log-softmax (2V); as the backward pass starts, with every activation still
      held, the gradients of those two (2V). Neither family keeps anything for its positions: a
      learned table is added (gpt2), rotary tables are buffers (llama).
    `activation_bytes` agrees with the tensors a real forward saves, plus the logits, to within 3%
    for both families (tests/test_cli.py), and the plan's total with a profiled CPU step to within
    5% (tests/test_memory.py).

    With bf16 autocast (CUDA) the norms' inputs stay fp32 (4C bytes each) and the other values are
    bf16 (2 bytes; llama's RMSNorm counted as CUDA's fused kernel keeps it, its input and 1/RMS
    like LayerNorm; QK-norm takes queries and keys in fp32); dropout masks are bytes; the logits are bf16 and their fp32 copy and log-softmax follow (10V bytes),
    then their gradients (8V). An estimate, checked on CUDA by the train stage's log, not here.
    """
    C, F, H, V = config.n_embd, config.ffn_hidden, config.n_head, config.vocab_size
    llama = config.arch == "llama"
    dropout = config.dropout > 0
    # per block: the fused kernel's fp32 log-sum-exp per head, or the explicit one's weights. In
    # fp32 the fused kernel keeps llama's values as a view of the q/k/v projection, holding all
    # 3C of it; the explicit one's matmul keeps a C copy, so 2C fewer (gpt2's q and k are views
    # too, which the explicit kernel copies: no difference there)
    T = config.block_size
    attention = 4 * H
    if explicit:
        attention = (6 if bf16 else 4) * H * T
        if llama and not config.qk_norm and not bf16:
            attention -= 8 * C
    if bf16:
        if llama:  # 2 fp32 norm inputs; bf16 matmul inputs, q, k, v, rotated q and k, SwiGLU's 4F
            block = 8 * C + 2 * (8 * C + 4 * F)
            if config.qk_norm:  # the norm takes each head's queries and keys in fp32, and its 1/RMS
                block += 8 * C + 8 * H
        else:  # 2 fp32 norm inputs; bf16 c_attn and c_proj inputs, q, k, v, c_fc's input, GELU's 2F
            block = 8 * C + 2 * (6 * C + 2 * F)
        return PerToken(
            block=block + attention + (2 * C if dropout else 0),
            block_input=4 * C,
            outside=6 * C + (C if dropout else 0) + 10 * V,
            loss_gradients=8 * V,
            logits=2 * V,
        )
    if llama:
        block = 4 * (12 * C + 4 * F + 2) + (4 * (3 * C + 2 * H) if config.qk_norm else 0)
    else:
        block = 4 * (8 * C + 2 * F + 4)
    return PerToken(
        block=block + attention + (8 * C if dropout else 0),
        block_input=4 * C,
        outside=4 * ((3 if llama else 2) * C + 2 * V) + (4 * C if dropout else 0),
        loss_gradients=8 * V,
        logits=4 * V,
    )


def activation_bytes(
    config: GPTConfig,
    batch_size: int,
    bf16: bool = False,
    checkpointing: bool = False,
    explicit: bool = False,
) -> int:
    """Estimated bytes of the activations that one training micro-batch's forward pass keeps for
    its backward pass (`per_token`): the blocks' saved tensors, or with activation checkpointing
    only their inputs, and what is saved outside them, the logits included."""
    t = per_token(config, bf16, explicit)
    block = t.block_input if checkpointing else t.block
    return batch_size * config.block_size * (config.n_layer * block + t.outside)


def peak_activation_bytes(
    config: GPTConfig,
    batch_size: int,
    bf16: bool = False,
    checkpointing: bool = False,
    explicit: bool = False,
) -> int:
    """The most activation bytes one micro-batch holds at once: what its forward pass kept, and
    the loss's gradients as the backward pass starts. With activation checkpointing, during the
    backward pass one block's activations are recomputed at a time, once the loss's values outside
    the blocks are freed: the larger of the two counts."""
    t = per_token(config, bf16, explicit)
    tokens = batch_size * config.block_size
    if checkpointing:
        return tokens * (config.n_layer * t.block_input + max(t.block, t.outside + t.loss_gradients))
    return tokens * (config.n_layer * t.block + t.outside + t.loss_gradients)


def recomputed_bytes(config: GPTConfig, batch_size: int, bf16: bool = False, explicit: bool = False) -> int:
    """With activation checkpointing, the activations held when the gradients are nearly all made:
    the blocks' saved inputs, the first block's recomputed activations, and the logits, which the
    training loop holds (`_, loss = model(x, y)`) until the step ends."""
    t = per_token(config, bf16, explicit)
    return batch_size * config.block_size * (config.n_layer * t.block_input + t.block + t.logits)


@dataclass(frozen=True)
class Sizes:
    """Parameter counts of a model shape that the plan needs (exact, from the meta device)."""

    total: int  # every parameter, the tied head once
    block: int  # one transformer block
    rows: tuple[tuple[int, int], ...]  # (dim 0, numel) of each parameter: what FSDP shards
    # what bf16 autocast casts: the Linear layers' parameters (the head once, tied or not);
    # embeddings (gpt2's position table, an untied token embedding) and norms stay fp32
    cast: int
    # (dim 0, numel) of the blocks' matrices, which train.optimizer: muon updates with Muon
    hidden_rows: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of(cls, config: GPTConfig) -> Sizes:
        # the meta device builds the modules without allocating their weights
        with meta_device():
            model = GPT(config)
        params = list(model.parameters())
        linear = {id(p): p for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters()}
        named = dict(model.named_parameters())
        return cls(
            total=sum(p.numel() for p in params),
            block=max((sum(p.numel() for p in b.parameters()) for b in blocks(model)), default=0),
            rows=tuple((p.shape[0], p.numel()) for p in params),
            cast=sum(p.numel() for p in linear.values()),
            hidden_rows=tuple((named[n].shape[0], named[n].numel()) for n in sorted(hidden_matrices(model))),
        )

    def shard(self, processes: int, rows: tuple[tuple[int, int], ...] | None = None) -> int:
        """Parameters in the largest process's shard: ceil(rows / W) rows of each tensor (of
        `rows`, by default every parameter's)."""
        return sum(math.ceil(r / processes) * (numel // r) for r, numel in (rows or self.rows))


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per process for one training configuration, and the device memory they must fit."""

    config: GPTConfig
    batch_size: int  # the global micro-batch, shared by the processes
    processes: int
    parallel: str
    bf16: bool
    checkpointing: bool
    accumulating: bool  # grad_accum_steps > 1: gradients live through the next forward pass
    weights: int
    working: int
    gradients: int
    optimizer: int
    activations: int
    recomputed: int  # activations still held beside the whole gradients (checkpointing's)
    available: int | None  # device memory of one process; None when unknown
    where: str  # what `available` is
    optimizer_name: str = "AdamW"  # "AdamW + Muon" with train.optimizer: muon
    explicit: bool = False  # the explicit attention kernel, which keeps the attention weights
    trainable: int | None = None  # fine-tuning: the parameters that train (None: all of them)
    adapters: int = 0  # LoRA's parameters, beside the model's

    @property
    def total(self) -> int:
        """The peak. Activations and gradients peak apart unless gradients accumulate: the loop
        frees the gradients after each optimizer step, and the backward pass frees activations
        as it makes gradients."""
        states = self.weights + self.working + self.optimizer
        if self.accumulating:
            return states + self.gradients + self.activations
        return states + max(self.activations, self.gradients + self.recomputed)

    @property
    def fits(self) -> bool | None:
        return None if self.available is None else self.total <= HEADROOM * self.available

    @property
    def config_parameters(self) -> int:
        """The model's own parameters (a tied head once), LoRA's adapters left out."""
        return self.weights // 4 - self.adapters

    def setting(self) -> str:
        mode = f"{self.parallel} over {self.processes}" if self.processes > 1 else "one process"
        return (
            f"{mode}, {'bf16' if self.bf16 else 'fp32'}, micro-batch {self.batch_size // self.processes} "
            f"x {self.config.block_size} tokens per process{', accumulated' if self.accumulating else ''}, "
            f"activation checkpointing {'on' if self.checkpointing else 'off'}"
            f"{', explicit attention' if self.explicit else ''}"
        )

    def verdict(self) -> str:
        if self.available is None:
            return f"{human_bytes(self.total)} per process; device memory unknown ({self.where})"
        share = self.total / self.available
        word = "fits" if self.fits else "does NOT fit"
        return f"{human_bytes(self.total)} per process {word} in {human_bytes(self.available)} ({self.where}, {share:.0%})"

    def rows(self) -> list[tuple[str, str]]:
        """The plan as (label, value) lines, for `gptcore info` and the train log."""

        def amount(n: int) -> str:
            return f"{n:,} bytes ({human_bytes(n)})"

        trained = []
        if self.trainable is not None:
            total = self.config_parameters + self.adapters
            share = f"{self.trainable / total:.1%}" if total else "-"
            trained = [("  trainable parameters", f"{self.trainable:,} of {total:,} ({share})")]
        return [
            ("memory plan", self.setting()),
            *trained,
            ("  weights (fp32 masters)", amount(self.weights)),
            ("  working copies", amount(self.working)),
            ("  gradients", amount(self.gradients)),
            (f"  optimizer ({self.optimizer_name})", amount(self.optimizer)),
            ("  activations", amount(self.activations)),
            ("  peak", self.verdict()),
        ]


def plan_memory(
    config: GPTConfig,
    batch_size: int,
    processes: int = 1,
    parallel: str = "ddp",
    bf16: bool = False,
    checkpointing: bool = False,
    accumulating: bool = False,
    available: int | None = None,
    where: str = "unknown",
    sizes: Sizes | None = None,
    optimizer: str = "adamw",
    explicit: bool = False,
    trainable: int | None = None,
    adapters: int = 0,
    adapter_per_token: int = 0,
) -> MemoryPlan:
    """The plan for `batch_size` sequences a micro-step, shared by `processes` (see the module doc);
    for fine-tuning, `trainable` parameters train (of the model's and `adapters` LoRA ones), whose
    activations keep `adapter_per_token` more bytes a token."""
    if trainable is not None and (processes > 1 or optimizer != "adamw"):
        raise ValueError("a fine-tuning plan is of one process with AdamW")
    sizes = sizes or Sizes.of(config)
    n = sizes.total
    # Muon keeps one fp32 moment (its momentum) for the blocks' matrices it owns; AdamW two for the rest
    muon = 0
    if optimizer == "muon":
        muon = sum(numel for _, numel in sizes.hidden_rows)
    compute = 2 if bf16 else 4
    if parallel == "fsdp" and processes > 1:
        local = sizes.shard(processes)
        if muon:
            muon = sizes.shard(processes, sizes.hidden_rows)
        root = n - config.n_layer * sizes.block
        working = compute * (root + 2 * sizes.block)
        gradients = 4 * (local + sizes.block)
    else:
        local = n
        working = 2 * sizes.cast if bf16 else 0
        gradients = 4 * n
    optimizer_bytes = 8 * (local - muon) + 4 * muon
    activations = peak_activation_bytes(config, batch_size // processes, bf16, checkpointing, explicit)
    if trainable is not None:
        local += adapters
        gradients, optimizer_bytes = 4 * trainable, 8 * trainable
        activations += batch_size * config.block_size * adapter_per_token
    return MemoryPlan(
        config=config,
        batch_size=batch_size,
        processes=processes,
        parallel=parallel,
        bf16=bf16,
        checkpointing=checkpointing,
        accumulating=accumulating,
        weights=4 * local,
        working=working,
        gradients=gradients,
        optimizer=optimizer_bytes,
        activations=activations,
        recomputed=recomputed_bytes(config, batch_size // processes, bf16, explicit) if checkpointing else 0,
        available=available,
        where=where,
        optimizer_name="AdamW + Muon" if optimizer == "muon" else "AdamW",
        explicit=explicit,
        trainable=trainable,
        adapters=adapters,
    )


def device_memory(device: torch.device, local_processes: int = 1) -> tuple[int | None, str]:
    """(bytes one process may use, what they are): a GPU's memory, or the host's RAM shared by
    the node's processes; None on devices whose memory torch does not report (MPS)."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return props.total_memory, f"memory of {props.name}"
    if device.type == "cpu":
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        shared = f", shared by {local_processes} processes" if local_processes > 1 else ""
        return ram // local_processes, f"this machine's RAM{shared}"
    return None, f"{device.type} does not report its memory"


def what_would_fit(plan: MemoryPlan, sizes: Sizes | None = None) -> list[str]:
    """Changes to a plan that does not fit, each with the total it would need per process."""
    sizes = sizes or Sizes.of(plan.config)

    def again(**changes: object) -> MemoryPlan:
        fields = {
            "batch_size": plan.batch_size,
            "processes": plan.processes,
            "parallel": plan.parallel,
            "checkpointing": plan.checkpointing,
            "accumulating": plan.accumulating,
            "explicit": plan.explicit,
            **changes,
        }
        return plan_memory(
            plan.config,
            bf16=plan.bf16,
            available=plan.available,
            where=plan.where,
            sizes=sizes,
            optimizer="muon" if plan.optimizer_name == "AdamW + Muon" else "adamw",
            **fields,  # type: ignore[arg-type]
        )

    options: list[tuple[str, MemoryPlan]] = []
    if plan.explicit:
        options.append(("train.attention: sdpa", again(explicit=False)))
    if plan.parallel != "fsdp" and plan.processes > 1:
        options.append(("train.parallel: fsdp", again(parallel="fsdp")))
    if not plan.checkpointing:
        options.append(("train.activation_checkpointing: true", again(checkpointing=True)))
    per_process = plan.batch_size // plan.processes
    if per_process > 1:
        # half the micro-batch and twice the accumulation: the same global batch a step
        smaller = again(batch_size=per_process // 2 * plan.processes, accumulating=True)
        options.append(("half train.batch_size, twice train.grad_accum_steps", smaller))
    if per_process > 1:
        # the least a process can hold of activations: one sequence at a time, recomputed
        least = again(batch_size=plan.processes, checkpointing=True, accumulating=True)
        options.append(
            (
                f"activation checkpointing and 1 sequence per micro-batch ({per_process}x the accumulation)",
                least,
            )
        )
    for processes in (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024):
        if processes <= plan.processes or plan.batch_size % processes:
            continue
        # the same global batch shared by more processes, the weights sharded over all of them
        more = again(processes=processes, parallel="fsdp", checkpointing=True)
        if more.fits:
            options.append(
                (
                    f"fsdp with activation checkpointing over {processes} processes (nproc_per_node x nnodes)",
                    more,
                )
            )
            break
    return [f"{label}: {human_bytes(p.total)}{'' if p.fits else ' (still too much)'}" for label, p in options]


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} B"


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks: the members of its ModuleLists, whatever their class, so
    that checkpointing and sharding apply to every family's blocks alike."""
    return [block for child in model.children() if isinstance(child, nn.ModuleList) for block in child]


def checkpoint_blocks(model: nn.Module) -> None:
    """Make each block recompute its activations in the backward pass instead of keeping them.

    The block's own forward is replaced by a checkpointed call of it (non-reentrant, the variant
    PyTorch recommends; the RNG state is replayed, so dropout masks match), so parameter names,
    state dicts and FSDP's per-block hooks stay as they are: the recomputation runs inside the
    hooked call, while FSDP holds the block's parameters gathered for its backward."""
    for block in blocks(model):
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def held_bytes(model: nn.Module, optimizer: Any) -> tuple[int, int]:
    """(parameter bytes, optimizer-state bytes) this process holds, measured from its tensors: a
    sharded parameter or moment counts its local shard only."""

    def local(t: torch.Tensor) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    params = sum(local(p) for p in model.parameters())
    # gptcore.optimizers.Optimizers holds several torch optimizers (AdamW, and Muon)
    parts = getattr(optimizer, "optimizers", {"": optimizer}).values()
    state = sum(
        local(v)
        for part in parts
        for per_param in part.state.values()
        for v in per_param.values()
        if isinstance(v, torch.Tensor) and v.dim() > 0  # the step counters are scalars
    )
    return params, state


def peak_allocated(run: Callable[[], None]) -> int:
    """The most bytes that `run`'s own allocations held at once, on the CPU: every allocation and
    free torch's profiler records, replayed in order. What `run` allocates must be freed by the
    time it returns (its locals are, after a collection), so the count ends where it began."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
        gc.collect()  # a checkpointed block's forward refers back to the block: a cycle
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak
