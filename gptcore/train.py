"""The training loop: LR schedule, evaluation, logging, checkpoints and exact resume.

`train()` is the entry point; `_Run` is the one stateful object: it owns the model, the
optimizer and every piece of the loop's bookkeeping (step, history, clock, throughput window,
losses not yet checked, last checkpoint). Everything else here is small and tested on its own.

Exact resume. Every `checkpoint_interval` steps the loop writes (atomically) what the next step
depends on: weights, optimizer moments, the step, every RNG state (torch's, the batch sampler's,
CUDA's, Python's and NumPy's), and the evaluations logged so far. A run started again with the
same train params and token files continues from there, and on CPU its weights and logged losses
are bit-identical to a run never stopped: batches come from the saved sampler state, dropout from
the saved torch state, and nothing else in a step is random. A checkpoint of other params or other
token data is never resumed; `resume_mismatch` says why.

Benchmark during training. With train.benchmark_interval the loop also scores a fixed HellaSwag
subset every that many steps and at the end (`BenchmarkSubset`), as llm.c does, and logs its
acc_norm beside the losses. Scoring draws no random number and changes no weight, so the run's
model and losses are those of the same run without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from gptcore.autotune import Decision, bf16_supported, cached_decision, decide
from gptcore.benchmark.score import encode_request, predicted, score_items
from gptcore.benchmark.suite import Suite, Task
from gptcore.checkpoint import (
    device_rng_state,
    load_checkpoint,
    resume_mismatch,
    rng_states,
    run_identity,
    save_checkpoint,
    set_rng_states,
)
from gptcore.data.token_store import TokenStore
from gptcore.device import model_flops_utilization, peak_flops, resolve_device
from gptcore.distributed import (
    Ranks,
    from_main,
    full_model,
    full_state,
    gather_to_all,
    load_full_state,
    mean_over_ranks,
    prepare,
    process_group,
)
from gptcore.errors import DataError, GptcoreError
from gptcore.evaluate import score_batches, seeded_batches
from gptcore.hf.convert import config_for_training, initial_weights, read_config
from gptcore.memory import (
    MemoryPlan,
    device_memory,
    held_bytes,
    plan_memory,
    what_would_fit,
)
from gptcore.model import ATTENTION_KERNELS, GPT, GPTConfig, flops_per_token
from gptcore.params import TrainParams
from gptcore.step import lm_loss, train_step
from gptcore.tokenizer import Tokenizer, canonical_json


def model_config(params: TrainParams, vocab_size: int) -> GPTConfig:
    """The model shape the train params describe, for a vocabulary of `vocab_size` ids."""
    return GPTConfig(
        vocab_size=vocab_size,
        block_size=params.block_size,
        n_layer=params.n_layer,
        n_head=params.n_head,
        n_embd=params.n_embd,
        dropout=params.dropout,
        bias=params.bias,
        arch=params.arch,
        tie_embeddings=params.tie_embeddings,
        qk_norm=params.qk_norm,
    )


def planned_config(params: TrainParams, vocab_size: int) -> GPTConfig:
    """The model the run will build, read without building it: with train.init_from the folder's
    config as training takes it (`config_for_training`: its SwiGLU width, say, which the train
    params do not carry), else `model_config`. A folder that cannot be read is planned from the
    params; the run then reports it."""
    if params.init_from:
        try:
            return config_for_training(read_config(params.init_from), params)
        except DataError:
            return model_config(params, vocab_size)
    return model_config(params, vocab_size)


@dataclass(frozen=True)
class RunPlan:
    """What a run is, decided before anything is allocated: built by `plan_run`, used by the
    training loop and by `gptcore info`."""

    config: GPTConfig  # the model the run builds: train.init_from's folder's, else the params'
    device: torch.device
    precision: Decision | None  # dtype, compile, attention kernel; None: auto, not measured yet (info)
    memory: MemoryPlan  # for the decided precision and kernel (auto undecided: the one needing less)
    resume: dict[str, Any] | None = None  # the checkpoint the run continues from (its "step")


def plan_run(
    params: TrainParams,
    vocab_size: int,
    device: torch.device,
    ranks: Ranks | None = None,
    saved: dict[str, Any] | None = None,
    config: GPTConfig | None = None,
    measure: bool = True,
    check: bool = True,
) -> RunPlan:
    """The run's plan: its model config (`planned_config`, or `config`), the memory plan, the
    precision (the checkpoint's `saved` when resuming, else forced by params, cached, or with
    `measure` timed by gptcore.autotune on this model, rank 0 deciding for all) and the memory plan
    for that choice. With `check` (training) the plans are printed on rank 0 and a plan that does
    not fit stops the run before anything is timed or allocated."""
    ranks = ranks or Ranks()
    config = config or planned_config(params, vocab_size)
    memory = memory_plan(params, config, device)
    if check:
        if ranks.is_main:
            for label, value in memory.rows():
                _say(f"{label.strip()}: {value}")
        check_memory_plan(memory)
    if measure or saved is not None:
        precision: Decision | None = _precision(params, config, device, ranks, saved)
    else:
        kernels = attention_kernels(params, config, device)
        micro_batch = params.batch_size // params.world_size
        precision = cached_decision(params, config, device, micro_batch, kernels=kernels)
    if precision is not None:
        if check and ranks.is_main:
            _say(f"precision: {precision.summary(params.max_iters)}")
        decided = (precision.choice.dtype == "bfloat16", precision.choice.attention == "explicit")
        # auto chose the other precision or the explicit kernel: that plan must fit too
        if decided != (memory.bf16, memory.explicit):
            memory = memory_plan(params, config, device, bf16=decided[0], explicit=decided[1])
            if check:
                if ranks.is_main:
                    _say(f"memory plan for the chosen precision and attention: {memory.verdict()}")
                check_memory_plan(memory)
    return RunPlan(config, device, precision, memory, saved)


def memory_plan(
    params: TrainParams,
    config: GPTConfig,
    device: torch.device,
    bf16: bool | None = None,
    explicit: bool | None = None,
) -> MemoryPlan:
    """The memory plan of this run on `device` (see gptcore.memory). `bf16` and `explicit` (the
    attention kernel) None: as train.dtype and train.attention say; for `auto`, the candidate that
    needs less (the check before the run stops only what no candidate fits; the loop plans again
    once autotune has chosen)."""
    if explicit is None:
        explicit = params.attention == "explicit"  # auto: sdpa, which keeps less
    if bf16 is None:
        if params.dtype == "auto":
            options = [False, True] if bf16_supported(device) else [False]
            return min(
                (memory_plan(params, config, device, b, explicit) for b in options), key=lambda p: p.total
            )
        bf16 = params.dtype == "bfloat16"
    available, where = device_memory(device, params.nproc_per_node)
    return plan_memory(
        config,
        params.batch_size,
        processes=params.world_size,
        parallel=params.parallel,
        bf16=bf16,
        optimizer=params.optimizer,
        checkpointing=params.activation_checkpointing,
        accumulating=params.grad_accum_steps > 1,
        available=available,
        where=where,
        explicit=explicit,
    )


def check_memory_plan(plan: MemoryPlan) -> None:
    """Stop before training when the plan does not fit, with the numbers and what would fit."""
    if plan.fits is False:
        raise GptcoreError(
            f"the memory plan does not fit: {plan.verdict()} with {plan.setting()}. "
            f"Change: {'; or '.join(what_would_fit(plan))} (see `gptcore info`)"
        )


def torch_threads(params: TrainParams, local_world_size: int) -> int:
    """The CPU threads a training process uses (0: torch's own choice, all cores)."""
    if not params.threads and local_world_size > 1:  # the node's cores, shared among its processes
        return max(1, (os.cpu_count() or 1) // local_world_size)
    return params.threads


def lr_at(step: int, params: TrainParams) -> float:
    """Linear warmup to learning_rate over warmup_iters, then cosine decay to min_lr at max_iters."""
    if step < params.warmup_iters:
        return params.learning_rate * (step + 1) / params.warmup_iters
    span = max(1, params.max_iters - params.warmup_iters)
    progress = min(1.0, (step - params.warmup_iters) / span)
    return params.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (params.learning_rate - params.min_lr)


# the task train.benchmark_interval scores, as llm.c does: 0-shot HellaSwag, whose acc_norm a small
# model lifts above chance early in training
BENCHMARK_TASK = "hellaswag"


@dataclass(frozen=True)
class BenchmarkSubset:
    """The items a run scores every train.benchmark_interval steps (`load_benchmark`), and the
    tokenizer that turns them into the run's token ids."""

    task: Task
    tokenizer: Tokenizer
    source: str  # the suite they were read from

    @property
    def metric(self) -> str:
        return f"benchmark/{self.task.name}_acc_norm"

    def identity(self) -> tuple[str, str]:
        """(what they are, a sha256 of the token ids scored and the gold choices): a checkpoint
        whose logged figures scored other items is not resumed."""
        items = self.task.items
        ids = [[encode_request(self.tokenizer, c, k) for c, k in item.requests] for item in items]
        digest = hashlib.sha256(canonical_json([ids, [item.gold for item in items]])).hexdigest()
        return f"{self.source} ({self.task.name}, first {len(items)} items)", digest

    def acc_norm(self, model: GPT, rows: int, device: torch.device) -> float:
        """The model's acc_norm on the items, scored as the benchmark stage scores them, `rows`
        rows per forward pass; leaves the model in eval mode."""
        scores = score_items(model, self.tokenizer, self.task.items, rows, device)
        right = [
            predicted(item, s, norm=True) == item.gold
            for item, s in zip(self.task.items, scores, strict=True)
        ]
        return sum(right) / len(right)


def load_benchmark(params: TrainParams, suite_dir: Path, tokenizer: Tokenizer) -> BenchmarkSubset | None:
    """train.benchmark_interval's items: the first train.benchmark_items of HellaSwag in the suite
    at `suite_dir` (what the download_benchmarks stage fetched), or None when it is off. A stage
    reads them before training, so that a missing suite stops it before the first step."""
    if not params.benchmark_interval:
        return None
    needs = f"train.benchmark_interval = {params.benchmark_interval} scores {BENCHMARK_TASK} from {suite_dir}"
    fetch = "fetch it with `dvc repro download_benchmarks`, or set train.benchmark_interval to 0"
    if not suite_dir.exists():
        raise GptcoreError(f"{needs}, which does not exist: {fetch}")
    try:
        with Suite(suite_dir) as suite:
            task = suite.load(BENCHMARK_TASK, params.benchmark_items)
            source = str(suite.source)
    except DataError as exc:
        raise DataError(f"{needs}: {exc} ({fetch})") from None
    return BenchmarkSubset(task, tokenizer, source)


class NonFiniteLossError(GptcoreError):
    """The loss or the weights became NaN or infinite: training cannot go on from here."""


# --- the loop ------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    model: GPT
    steps: int
    tokens_seen: int
    wall_seconds: float  # all segments of the run, when it was resumed
    tokens_per_second: float  # optimizer-step throughput, evaluation time excluded
    final_train_loss: float
    final_val_loss: float
    flops_per_token: int
    mfu: float | None  # None where the device's peak is unknown (CPU, unlisted GPUs)
    peak_memory_bytes: int | None  # CUDA only
    resumed_from: int | None  # the step the run continued from, None when it started fresh
    precision: Decision  # the dtype, compile and attention choice the run trained with, and why


# (step, metrics) at each evaluation: "train/loss", "val/loss", "lr", "perf/wall_seconds" (the
# run's so far), and from the second evaluation on "perf/tokens_per_second" (plus "perf/mfu" and
# "perf/peak_memory_gib" on CUDA); perf/ figures are measurements, which the stage keeps apart
# from the outputs (gptcore.reports.Telemetry);
# with train.benchmark_interval also (step, {BenchmarkSubset.metric: acc_norm}) at each of its steps,
# after the losses when both fall on one step
EvalCallback = Callable[[int, dict[str, float]], None]


def _say(message: str) -> None:
    tqdm.write(f"train: {message}")


class _Run:
    """One training run: the model, the optimizer and all of the loop's bookkeeping.

    Time: `train_seconds()` and `wall_seconds()` count every segment of a resumed run, the
    earlier ones from the checkpoint; evaluation and checkpoint writes run `_paused`, so training
    seconds exclude them. Throughput is `tokens_per_second` of steps over training seconds, for
    the window since the last evaluation, the progress bar and the whole run alike.
    """

    def __init__(
        self,
        params: TrainParams,
        train_store: TokenStore,
        val_store: TokenStore,
        ranks: Ranks,
        plan: RunPlan,
        benchmark: BenchmarkSubset | None,
    ) -> None:
        self.p = params
        self.bench = benchmark
        self.train_store = train_store
        self.ranks = ranks
        self.device = device = plan.device
        assert plan.precision is not None, "training plans are decided"
        self.precision = precision = plan.precision
        self.dtype = precision.choice.autocast_dtype
        torch.manual_seed(params.seed)
        initial = None
        if params.init_from:  # a Hugging Face folder: its config (checked against params), its weights
            self.config, initial = initial_weights(params, train_store.vocab_size)
        else:
            self.config = plan.config
        self.model = GPT(self.config)
        self.model.attention = precision.choice.attention
        if initial is not None:
            self.model.load_state_dict(initial)
        elif params.zero_init_proj:
            self.model.zero_output_projections()
        self.model.to(self.device)
        self.flops_per_token = flops_per_token(self.config, self.model.num_params())

        def seed_rank() -> None:
            if ranks.rank:
                torch.manual_seed(params.seed + ranks.rank)  # each rank its own dropout masks

        prepared = prepare(self.model, params, device, ranks, self.dtype, precision.choice.compile, seed_rank)
        self.sharded = prepared.sharded
        self.optimizer = prepared.optimizer
        self.fwd = prepared.forward  # evaluation calls the model itself, never through DDP
        self.ddp: DistributedDataParallel | None = prepared.ddp
        self.peak = peak_flops(self.device, self.dtype)
        self.batch_gen = torch.Generator().manual_seed(params.seed)
        self.rows = ranks.rows(params.batch_size)
        # the same batches at every evaluation, so successive losses are comparable
        self.eval_sets = {
            name: [
                (x[self.rows], y[self.rows])
                for x, y in seeded_batches(
                    store, params.eval_iters, params.batch_size, params.block_size, params.seed + 1
                )
            ]
            for name, store in (("train", train_store), ("val", val_store))
        }
        self.tokens_per_step = params.batch_size * params.block_size * params.grad_accum_steps
        self.identity: dict[str, Any] = {}
        # carried across segments of a resumed run
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.earlier_train_seconds = 0.0
        self.earlier_wall_seconds = 0.0
        self.resumed_from: int | None = None
        # this segment's clock (started by start_clock) and throughput window
        self.started = 0.0
        self.paused_seconds = 0.0
        self.window_steps = 0
        self.window_began = 0.0  # training seconds when the window opened
        # per-step losses not yet checked on the host: (step, loss tensor)
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.last_checkpoint: tuple[Path, int] | None = None

    # time and throughput

    def _now(self) -> float:
        if self.device.type == "cuda":  # CUDA calls return before their kernels finish
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def start_clock(self) -> None:
        self.started = self._now()
        self.paused_seconds = 0.0
        self.window_steps, self.window_began = 0, self.train_seconds()

    def wall_seconds(self) -> float:
        return self.earlier_wall_seconds + self._now() - self.started

    def train_seconds(self) -> float:
        return self.earlier_train_seconds + self._now() - self.started - self.paused_seconds

    @contextlib.contextmanager
    def _paused(self) -> Iterator[None]:
        began = self._now()
        try:
            yield
        finally:
            self.paused_seconds += self._now() - began

    def tokens_per_second(self, steps: int, seconds: float) -> float:
        """The one throughput formula: tokens of `steps` optimizer steps over `seconds`."""
        return steps * self.tokens_per_step / max(seconds, 1e-9)

    def window_tokens_per_second(self) -> float | None:
        """Throughput since the last evaluation, or None before any step."""
        if not self.window_steps:
            return None
        return self.tokens_per_second(self.window_steps, self.train_seconds() - self.window_began)

    # checkpoints

    def whole_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The model's and optimizer's state dicts with whole tensors, whatever the parallel mode,
        so that any number of processes in either mode resumes them. Under fsdp every rank takes
        part in gathering the shards and rank 0 keeps the result (on the CPU)."""
        if self.sharded:
            return full_state(self.model, self.optimizer, self.ranks)
        return self.model.state_dict(), self.optimizer.state_dict()

    def state(
        self, per_rank_rng: list[dict[str, Any]], whole: tuple[dict[str, Any], dict[str, Any]]
    ) -> dict[str, Any]:
        """Everything the next step depends on, and the run's totals so far, as of now; `whole`
        is `whole_state()`, gathered by every rank for this write."""
        return {
            "run": self.identity,
            "step": self.step,
            "model": whole[0],
            "optimizer": whole[1],
            "rng": rng_states(self.batch_gen, per_rank_rng),
            "precision": self.precision.to_dict(),
            "history": self.history,
            "train_seconds": self.train_seconds(),
            "wall_seconds": self.wall_seconds(),
        }

    def restore(self, saved: dict[str, Any]) -> None:
        if self.sharded:
            load_full_state(self.model, self.optimizer, saved["model"], saved["optimizer"])
        else:
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
        set_rng_states(saved["rng"], self.batch_gen, self.device, self.ranks.rank)
        self.step = int(saved["step"])
        self.history = [dict(record) for record in saved["history"]]
        self.earlier_train_seconds = float(saved["train_seconds"])
        self.earlier_wall_seconds = float(saved["wall_seconds"])

    def resume(self, path: Path, saved: dict[str, Any]) -> None:
        """Continue from `saved`, the checkpoint at `path` that `resumable` found to be this run's."""
        ranks = self.ranks
        self.restore(saved)
        self.resumed_from = self.step
        self.last_checkpoint = (path, self.step)
        if ranks.is_main:
            _say(f"resuming from {path} at step {self.step} of {self.p.max_iters}")
            writers = len(saved["rng"]["ranks"])
            if writers != ranks.world_size:
                _say(
                    f"the checkpoint was written by {writers} processes, this run has {ranks.world_size}: "
                    "the data stream continues exactly, dropout draws do not"
                )

    def save_checkpoint(self, path: Path) -> None:
        with self._paused():
            self.check_pending()
            self.check_weights()
            per_rank_rng = gather_to_all(device_rng_state(self.device), self.ranks)
            whole = self.whole_state()
            if self.ranks.is_main:
                save_checkpoint(path, self.state(per_rank_rng, whole))
            self.last_checkpoint = (path, self.step)

    def report_memory(self, plan: MemoryPlan, first: bool) -> None:
        """After the first step: the parameter and optimizer bytes this process holds, measured.
        After the first few on CUDA: the plan beside what the allocator's peak was. Paused."""
        with self._paused():
            if first:
                params, state = held_bytes(self.model, self.optimizer)
                if self.ranks.is_main:
                    _say(
                        f"held by this process: {params:,} bytes of parameters, {state:,} of optimizer state"
                    )
                return
            if self.device.type == "cuda" and self.ranks.is_main:
                peak = torch.cuda.max_memory_allocated(self.device)
                _say(
                    f"memory plan {plan.total / 2**30:.2f} GiB, CUDA peak allocated {peak / 2**30:.2f} GiB "
                    f"after {self.step} steps: the plan is off by {(plan.total - peak) / 2**30:+.2f} GiB "
                    f"({(plan.total - peak) / peak:+.0%})"
                )

    # numerics

    def fail(self, what: str, step: int) -> NonFiniteLossError:
        if self.last_checkpoint:
            path, at = self.last_checkpoint
            kept = f"the last good checkpoint, {path} (step {at}), is kept"
        else:
            kept = "no checkpoint was written before it"
        return NonFiniteLossError(
            f"{what} at step {step}: {kept}. Lower train.learning_rate, raise train.warmup_iters "
            "or set train.grad_clip, then run again"
        )

    def check_pending(self) -> float | None:
        """Check the losses since the last check (one host sync); their mean, or None if none."""
        if not self.pending:
            return None
        losses = mean_over_ranks(torch.stack([loss for _, loss in self.pending]), self.ranks).cpu()
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            i = int(bad[0])
            raise self.fail(f"the train loss became {losses[i].item()}", self.pending[i][0])
        self.pending.clear()
        return losses.mean().item()

    def check_weights(self) -> None:
        # sharded, every parameter is a DTensor
        local = [p.to_local() if self.sharded else p for p in self.model.parameters()]  # type: ignore[attr-defined]
        finite = torch.stack([torch.isfinite(p).all() for p in local]).all().float()
        if mean_over_ranks(finite, self.ranks).item() < 1:  # every rank checks its shards
            raise self.fail("the weights became non-finite", self.step)

    # the work

    def evaluate(self, on_eval: EvalCallback | None) -> dict[str, float]:
        """Estimate both losses, record them in the history and hand them to `on_eval`; then open
        a new throughput window. Paused: none of it counts as training time."""
        tokens_per_second = self.window_tokens_per_second()
        with self._paused():
            losses = torch.tensor(
                [
                    score_batches(self.fwd, self.eval_sets[s], self.device, self.dtype).loss
                    for s in ("train", "val")
                ],
                device=self.device,
            )
            if self.ranks.distributed:  # each rank scored its rows of the same batches
                losses = mean_over_ranks(losses, self.ranks)
            record = {"train/loss": losses[0].item(), "val/loss": losses[1].item()}
            for split in ("train", "val"):
                if not math.isfinite(record[f"{split}/loss"]):
                    raise self.fail(f"the {split} loss estimate became {record[f'{split}/loss']}", self.step)
            record["lr"] = lr_at(self.step, self.p)
            record["perf/wall_seconds"] = self.wall_seconds()
            if tokens_per_second is not None:
                record["perf/tokens_per_second"] = tokens_per_second
                mfu = model_flops_utilization(self.flops_per_token, tokens_per_second, self.peak)
                if mfu is not None:
                    record["perf/mfu"] = mfu
                if self.device.type == "cuda":
                    record["perf/peak_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            self.history.append({"step": self.step, **record})
            if on_eval:
                on_eval(self.step, record)
        self.window_steps, self.window_began = 0, self.train_seconds()
        return record

    def benchmark(self, on_eval: EvalCallback | None) -> None:
        """Score the benchmark subset, record its acc_norm in the history and hand it to `on_eval`.
        Rank 0 scores the model itself, never a compiled or DDP wrapper (the other ranks hold the
        same weights and wait for its figure), without gradients and in eval mode, so it draws no
        random number, and the model goes back to train mode. Paused."""
        assert self.bench is not None
        assert not self.sharded, "params refuse train.benchmark_interval with fsdp over several processes"
        with self._paused():
            value = 0.0
            if self.ranks.is_main:
                was_training = self.model.training
                with torch.no_grad():
                    # the micro-batch as rows per pass: whatever memory trains it, scores it
                    value = self.bench.acc_norm(self.model, self.rows.stop - self.rows.start, self.device)
                self.model.train(was_training)
            record = {self.bench.metric: float(from_main(value, self.ranks))}
            self.history.append({"step": self.step, **record})
            if on_eval:
                on_eval(self.step, record)

    def train_step(self) -> None:
        p = self.p
        # each group at its own peak times the schedule (Muon's muon_learning_rate, AdamW's learning_rate)
        self.optimizer.set_lr(lr_at(self.step, p))
        # every rank draws the whole global batch, so the sampler stays the same on all of them
        batches = []
        for _ in range(p.grad_accum_steps):
            x, y = self.train_store.random_windows(p.batch_size, p.block_size, self.batch_gen)
            batches.append((x[self.rows], y[self.rows]))
        total = train_step(
            lm_loss(self.ddp or self.fwd, self.device),
            batches,
            self.optimizer,
            self.model.parameters(),
            p.grad_clip,
            self.device,
            self.dtype,
            ddp=self.ddp,
        )
        self.pending.append((self.step, total))
        self.step += 1
        self.window_steps += 1

    def result(self, final: dict[str, float]) -> TrainResult:
        tokens_seen = self.p.max_iters * self.tokens_per_step
        tokens_per_second = self.tokens_per_second(self.p.max_iters, self.train_seconds())
        return TrainResult(
            model=full_model(self.model, self.config) if self.sharded else self.model,
            steps=self.p.max_iters,
            tokens_seen=tokens_seen,
            wall_seconds=self.wall_seconds(),
            tokens_per_second=tokens_per_second,
            final_train_loss=final["train/loss"],
            final_val_loss=final["val/loss"],
            flops_per_token=self.flops_per_token,
            mfu=model_flops_utilization(self.flops_per_token, tokens_per_second, self.peak),
            peak_memory_bytes=torch.cuda.max_memory_allocated(self.device)
            if self.device.type == "cuda"
            else None,
            resumed_from=self.resumed_from,
            precision=self.precision,
        )


def train(
    params: TrainParams,
    train_store: TokenStore,
    val_store: TokenStore,
    on_eval: EvalCallback | None = None,
    progress: bool = True,
    checkpoint: Path | None = None,
    ranks: Ranks | None = None,
    benchmark: BenchmarkSubset | None = None,
) -> TrainResult:
    """Train a GPT on the token stores, writing a resumable checkpoint to `checkpoint` every
    train.checkpoint_interval steps (0: never) and continuing from it when it holds this run's;
    `on_eval` receives every evaluation of the run, earlier segments' first. With
    train.benchmark_interval, `benchmark` (`load_benchmark`) is scored every that many steps.

    Under torchrun pass `ranks` (`Ranks.from_env()`): this process then trains its share of each
    batch in the run's process group, and only rank 0 writes the checkpoint; give `on_eval` on
    rank 0 only. Every rank returns the same trained model."""
    ranks = ranks or Ranks()
    if params.benchmark_interval and benchmark is None:
        raise GptcoreError(
            f"train.benchmark_interval = {params.benchmark_interval}: pass the items to score (load_benchmark)"
        )
    device = resolve_device(params.device)
    if device.type == "cuda" and ranks.distributed:
        device = torch.device("cuda", ranks.local_rank)
    threads = torch_threads(params, ranks.local_world_size)
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cpu":
        # compiled CPU kernels may otherwise reduce in a run-dependent order; eager CPU ops are
        # deterministic already, so this costs nothing there (measured: docs/training.md,
        # "The training loop")
        torch.use_deterministic_algorithms(True)
    for name, store in (("train", train_store), ("val", val_store)):
        if len(store) <= params.block_size:
            raise GptcoreError(
                f"the {name} split has {len(store)} tokens, fewer than train.block_size + 1 "
                f"({params.block_size + 1}): use more data or a smaller block_size"
            )
    with process_group(ranks, device):
        identity: dict[str, Any] = {}
        saved = None
        if checkpoint:
            inputs = {str(store.path): store.sha256() for store in (train_store, val_store)}
            if benchmark is not None and params.benchmark_interval:
                what, digest = benchmark.identity()
                inputs[what] = digest
            identity = run_identity(params, inputs)
            saved = resumable(checkpoint, identity, ranks)
        # the plan comes before anything is allocated: a run that cannot fit stops here, not at step 0
        plan = plan_run(params, train_store.vocab_size, device, ranks, saved)
        return _train(
            plan, identity, params, train_store, val_store, on_eval, progress, checkpoint, ranks, benchmark
        )


def resumable(path: Path, identity: dict[str, Any], ranks: Ranks) -> dict[str, Any] | None:
    """The checkpoint at `path` if it is this run's (rank 0 decides for all), else None."""
    saved, why = None, None
    if ranks.is_main and path.exists():
        saved = load_checkpoint(path)
        why = resume_mismatch(saved.get("run"), identity)
        if why:
            _say(f"not resuming {path}: it is from another run ({why}); starting fresh")
    if not from_main(saved is not None and why is None, ranks):
        return None
    if not ranks.is_main:
        if not path.exists():
            raise GptcoreError(
                f"rank {ranks.rank} cannot see {path}, which rank 0 resumes from: every node needs "
                "the same models/ folder (a shared filesystem), or delete the checkpoint to start fresh"
            )
        saved = load_checkpoint(path)
    return saved


def _precision(
    params: TrainParams, config: GPTConfig, device: torch.device, ranks: Ranks, saved: dict[str, Any] | None
) -> Decision:
    """dtype, compile and the attention kernel: the checkpoint's when resuming (a run never
    changes them midway), else forced by params, cached or measured (gptcore.autotune: every rank
    times the step together, rank 0's cache and kernels decide), the same on every rank.
    `attention: auto` tries the explicit kernel only where its memory plan fits
    (`attention_kernels`)."""
    if saved is not None and "precision" in saved:
        return Decision.from_dict(saved["precision"], "checkpoint")
    kernels = attention_kernels(params, config, device) if ranks.is_main else ATTENTION_KERNELS
    return decide(params, config, device, params.batch_size // ranks.world_size, kernels=kernels, ranks=ranks)


def attention_kernels(params: TrainParams, config: GPTConfig, device: torch.device) -> tuple[str, ...]:
    """The attention kernels `attention: auto` may time on `device`: the explicit one, which keeps
    the T x T weights, only where its memory plan fits."""
    if memory_plan(params, config, device, explicit=True).fits is False:
        return ("sdpa",)
    return ATTENTION_KERNELS


def _train(
    plan: RunPlan,
    identity: dict[str, Any],
    params: TrainParams,
    train_store: TokenStore,
    val_store: TokenStore,
    on_eval: EvalCallback | None,
    progress: bool,
    checkpoint: Path | None,
    ranks: Ranks,
    benchmark: BenchmarkSubset | None,
) -> TrainResult:
    run = _Run(params, train_store, val_store, ranks, plan, benchmark)
    run.identity = identity
    if checkpoint and plan.resume is not None:
        run.resume(checkpoint, plan.resume)
    if on_eval:
        for record in run.history:
            on_eval(int(record["step"]), {k: v for k, v in record.items() if k != "step"})

    run.start_clock()
    resumed_at = run.step
    run.model.train()
    bar = tqdm(
        total=params.max_iters,
        initial=run.step,
        desc="train",
        unit="step",
        disable=not (progress and ranks.is_main),
    )
    while run.step < params.max_iters:
        if run.step % params.eval_interval == 0:
            run.evaluate(on_eval)
        if params.benchmark_interval and run.step % params.benchmark_interval == 0:
            run.benchmark(on_eval)
        run.train_step()
        if run.step == resumed_at + 1 or run.step == min(resumed_at + 3, params.max_iters):
            run.report_memory(plan.memory, first=run.step == resumed_at + 1)
        bar.update(1)
        if run.step % params.log_interval == 0:
            mean_loss = run.check_pending()  # the only host sync in the hot loop
            bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{run.window_tokens_per_second():,.0f}")
        if checkpoint and params.checkpoint_interval and run.step % params.checkpoint_interval == 0:
            run.save_checkpoint(checkpoint)
    run.check_pending()
    final = run.evaluate(on_eval)
    if params.benchmark_interval:
        run.benchmark(on_eval)
    bar.close()
    return run.result(final)
