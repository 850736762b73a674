"""`train.dtype`, `train.compile` and `train.attention: auto`: decided by timing the candidates on
the machine that trains.

CPUs differ more than tables admit: bf16 matmuls run slower than fp32 on one and several times
faster on another, where the fused attention kernel's bf16 backward can still be slower than the
written-out one, and whether `torch.compile` pays depends on the model's shape as much as on the
hardware (measured in docs/training.md, "Precision, compiling and the attention kernel: measured on
your machine"). So `auto` is measured, never looked up:

1. each candidate precision (fp32; bf16 autocast where the device has it) with each attention
   kernel (fused `sdpa`, `explicit`; gptcore.model) trains this run's model (the imported one's
   shape with `train.init_from`), micro-batch and gradient accumulation eagerly for a few steps of
   the run's own step function (gptcore.step), its model wrapped as the run's is (ddp or fsdp over
   the run's processes, which all time it together): warm-up steps, then timed ones (median),
   which stop once `SETTLED_STEPS` agree. Two cheap measurements rule a candidate out before its
   steps cost much: bf16 is not stepped at all where a matmul of the model's width runs
   `RULE_OUT` times slower in bf16 autocast than in fp32 (a CPU without bf16 instructions
   emulates it, far slower still, and each of its steps would cost as much), and an eager candidate
   whose first step alone takes `SLOW_START` times the fastest candidate's whole warm-up is
   stopped there;
2. the fastest of those is then timed compiled as well (when `compile: auto`); compiling does not
   change which eager candidate is fastest often enough to pay for a second compile. When it
   wins, its compiled code stays in memory and the run's own `torch.compile` reuses it, so its
   compile is the run's, not the probe's; when it loses, it is dropped;
3. each candidate's cost for this run is its warm-up (the compile, for a compiled one) plus its
   step time for the rest of the run's steps; the cheapest wins, and fp32 eager, then bf16, the
   fused kernel before the explicit one, then compiled, are preferred unless another candidate is
   more than `MARGIN` faster, so noise on a shared machine does not flip the decision between
   equal choices.

Bounded: each candidate times at most `TIMED_STEPS` steps and stops early after `PROBE_SECONDS`,
so the eager probes cost a small part of a run of the default length, the compiled one its compile
(what they cost: docs/training.md, "Precision, compiling and the attention kernel: measured on
your machine").
The figures (not the decision) are cached per machine, torch version, device, threads and model
shape in `~/.cache/gptcore/autotune.json` (`$GPTCORE_CACHE_DIR` moves it), so a repeated run pays
nothing and a run of another length re-decides from the same figures. A resumed run keeps the
choice its checkpoint recorded (`train.py`): it never re-measures mid-run.

Explicit `dtype: float32 | bfloat16`, `compile: true | false` and `attention: sdpa | explicit` are
obeyed without measuring; the others are still measured. The explicit kernel keeps each head's
T x T attention weights for the backward pass: a run whose memory plan fits only without them
(gptcore.memory) does not try it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import torch

from gptcore.atomic import atomic_file
from gptcore.distributed import Ranks, from_main, gather_to_all, prepare
from gptcore.model import ATTENTION_KERNELS, GPT, GPTConfig
from gptcore.params import TrainParams
from gptcore.step import lm_loss, train_step

WARM_STEPS = 2  # the first steps allocate, autotune oneDNN kernels, and (compiled) compile
TIMED_STEPS = 5
SETTLED_STEPS = 3  # timing stops once this many steps agree to within SETTLED
SETTLED = 0.05
PROBE_SECONDS = 10.0  # a candidate's timed steps stop after this much time (at least 2 are timed)
MARGIN = 0.05  # a later candidate must be this much cheaper to win over an earlier one
# bf16 is not stepped where its matmuls run this many times slower than fp32's: its step could
# not win (matmuls are most of a step), and where a CPU emulates bf16 a step costs far more
RULE_OUT = 2.0
# an eager candidate whose first step takes this many times the fastest one's whole warm-up is
# stopped after it (a first step is slower than later ones, never by this much among equals)
SLOW_START = 4.0
# rows of the matmul behind RULE_OUT: enough to time, few enough to stay cheap where bf16 is emulated
MATMUL_ROWS = 512
MATMUL_SECONDS = 0.05  # each precision's matmuls are timed for about this long (at least 3)
RULED_OUT = "ruled out: "  # how a Timing's error begins when a cheap measurement left it out
# 2: candidates name their attention kernel; 3: a step is an optimizer step; 4: several processes
# time their DDP or FSDP step together
CACHE_VERSION = 4


@dataclass(frozen=True)
class Choice:
    dtype: str  # "float32" or "bfloat16" (autocast; master weights stay fp32)
    compile: bool
    attention: str = "sdpa"  # GPT.attention: "sdpa" or "explicit"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.dtype == "bfloat16" else None

    def describe(self) -> str:
        precision = "bf16 autocast" if self.dtype == "bfloat16" else "fp32"
        return f"{'compiled' if self.compile else 'eager'} {precision}, {self.attention} attention"


@dataclass(frozen=True)
class Timing:
    """One candidate's probe: seconds of its warm-up steps and the median of its timed steps."""

    dtype: str
    compile: bool
    warm_seconds: float
    step_seconds: float | None  # None: the candidate failed (reason in `error`)
    error: str | None = None
    attention: str = "sdpa"

    @property
    def choice(self) -> Choice:
        return Choice(self.dtype, self.compile, self.attention)

    @property
    def ruled_out(self) -> bool:
        """Left out by a cheap measurement (RULE_OUT, SLOW_START) rather than failed."""
        return self.error is not None and self.error.startswith(RULED_OUT)

    def run_seconds(self, steps: int) -> float:
        """What `steps` optimizer steps cost with this candidate, its compile included."""
        assert self.step_seconds is not None
        # the warm-up steps are steps of the run too; what they took beyond a step is overhead
        return self.warm_seconds + max(0, steps - WARM_STEPS) * self.step_seconds


@dataclass
class Decision:
    choice: Choice
    source: str  # "params" (forced), "measured", "cache" or "checkpoint"
    timings: list[Timing] = field(default_factory=list)

    def to_dict(self, steps: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dtype": self.choice.dtype,
            "compile": self.choice.compile,
            "attention": self.choice.attention,
            "source": self.source,
        }
        if self.timings:
            out["candidates"] = [_timing_dict(t, steps) for t in self.timings]
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str) -> Decision:
        # a checkpoint written before the attention kernel was a choice trained with the fused one
        timings = [
            Timing(
                t["dtype"],
                t["compile"],
                t["warm_seconds"],
                t["step_seconds"],
                t.get("error"),
                t.get("attention", "sdpa"),
            )
            for t in raw.get("candidates", [])
        ]
        choice = Choice(raw["dtype"], bool(raw["compile"]), raw.get("attention", "sdpa"))
        return cls(choice, source, timings)

    def summary(self, steps: int) -> str:
        lines = [f"{self.choice.describe()} ({self.source})"]
        for t in self.timings:
            if t.step_seconds is None:
                lines.append(f"  {t.choice.describe():40s} {'' if t.ruled_out else 'failed: '}{t.error}")
            else:
                lines.append(
                    f"  {t.choice.describe():40s} {t.step_seconds * 1e3:8.1f} ms/step, warm-up "
                    f"{t.warm_seconds:5.1f} s, {steps} steps ~{t.run_seconds(steps):7.1f} s"
                )
        return "\n".join(lines)


def _timing_dict(t: Timing, steps: int | None) -> dict[str, Any]:
    out = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(t).items()}
    if steps is not None and t.step_seconds is not None:
        out["run_seconds_estimate"] = round(t.run_seconds(steps), 1)
    return out


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast runs on the device at all (whether it is fast is for timing to say)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "mps":
        try:  # macOS 14 and later
            torch.ones(1, dtype=torch.bfloat16, device=device)
        except (RuntimeError, TypeError):
            return False
        return True
    return True  # every CPU: where it lacks bf16 instructions, oneDNN emulates (and timing says so)


def pick(timings: list[Timing], steps: int) -> Choice:
    """The candidate whose run of `steps` steps costs least, preferring earlier candidates unless a
    later one is more than MARGIN cheaper. Timings are in preference order."""
    ok = [t for t in timings if t.step_seconds is not None]
    if not ok:
        raise RuntimeError(
            "no precision/compile/attention candidate ran: " + "; ".join(str(t.error) for t in timings)
        )
    best = ok[0]
    for t in ok[1:]:
        if t.run_seconds(steps) < (1.0 - MARGIN) * best.run_seconds(steps):
            best = t
    return best.choice


Probe = Callable[[Choice], Timing]


def search(
    params: TrainParams, device: torch.device, probe: Probe, kernels: tuple[str, ...] = ATTENTION_KERNELS
) -> list[Timing]:
    """Time the candidates the params leave open, in preference order (see the module's doc).
    `kernels`: the attention kernels `attention: auto` may try (those the memory plan fits)."""
    dtypes = [params.dtype] if params.dtype != "auto" else ["float32"]
    if params.dtype == "auto" and bf16_supported(device):
        dtypes.append("bfloat16")
    attentions = (
        [params.attention] if params.attention != "auto" else [k for k in ATTENTION_KERNELS if k in kernels]
    )
    compile_auto = params.compile == "auto"
    compiled = False if compile_auto else bool(params.compile)
    first = [probe(Choice(d, compiled, a)) for d in dtypes for a in attentions]
    if not compile_auto:
        return first
    done = [t for t in first if t.step_seconds is not None]
    if not done:
        return first
    fastest = min(done, key=lambda t: cast(float, t.step_seconds))
    return [*first, probe(Choice(fastest.dtype, True, fastest.attention))]


def machine_key(params: TrainParams, config: GPTConfig, device: torch.device, micro_batch: int) -> str:
    """What the figures depend on: the hardware, the torch build, the threads and the model shape."""
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f"{_cpu_name()} x{os.cpu_count()}"
    key = {
        "v": CACHE_VERSION,
        "device": device.type,
        "hardware": hardware,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": config.to_dict(),
        "micro_batch": micro_batch,
        "grad_accum_steps": params.grad_accum_steps,
        "optimizer": params.optimizer,
        "activation_checkpointing": params.activation_checkpointing,
        # several processes time their all-reduce (ddp) or gathers (fsdp) too
        "processes": params.world_size,
        "parallel": params.parallel if params.world_size > 1 else None,
    }
    return json.dumps(key, sort_keys=True)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_path() -> Path:
    root = os.environ.get("GPTCORE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gptcore"
    )
    return Path(root) / "autotune.json"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # no cache, or a damaged one: measure again and rewrite it
    return data if isinstance(data, dict) else {}


def cached_timings(key: str, path: Path | None = None) -> list[Timing] | None:
    raw = _read_cache(path or cache_path()).get(key)
    if not isinstance(raw, list):
        return None
    try:
        return [Timing(**t) for t in raw]
    except TypeError:
        return None


def store_timings(key: str, timings: list[Timing], path: Path | None = None) -> None:
    path = path or cache_path()
    data = _read_cache(path)
    data[key] = [asdict(t) for t in timings]
    try:
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    except OSError:
        pass  # a read-only home costs a re-measure next time, never the run


def cached_decision(
    params: TrainParams,
    config: GPTConfig,
    device: torch.device,
    micro_batch: int,
    cache: Path | None = None,
    kernels: tuple[str, ...] = ATTENTION_KERNELS,
) -> Decision | None:
    """The decision without timing anything: forced by params, or from the cache; None when the
    cache lacks a candidate this run would time."""
    if "auto" not in (params.dtype, params.compile, params.attention):
        return Decision(Choice(params.dtype, bool(params.compile), params.attention), "params")
    cached = cached_timings(machine_key(params, config, device, micro_batch), cache) or []
    try:  # the same search as a measurement, answered from the cache
        timings = search(params, device, lambda c: _lookup(cached, c), kernels)
    except LookupError:
        return None
    return Decision(pick(timings, params.max_iters), "cache", timings)


def decide(
    params: TrainParams,
    config: GPTConfig,
    device: torch.device,
    micro_batch: int,
    probe: Probe | None = None,
    cache: Path | None = None,
    kernels: tuple[str, ...] = ATTENTION_KERNELS,
    ranks: Ranks | None = None,
) -> Decision:
    """The precision, compile and attention choice for this run: forced by params, else from the
    cache, else measured now (and cached). `kernels`: see `search`.

    Under several processes every rank calls it and gets the same decision: rank 0 alone reads
    and writes the cache, and its answer and its `kernels` go to all; when the candidates must be
    measured, all ranks time each one together (`TrainingProbe`), so the step timed holds the
    run's all-reduce or sharded gathers, and they agree on every figure."""
    ranks = ranks or Ranks()
    found = cached_decision(params, config, device, micro_batch, cache, kernels) if ranks.is_main else None
    found, kernels = from_main((found, kernels), ranks)
    if found is not None:
        return cast(Decision, found)
    timings = search(
        params, device, probe or TrainingProbe(params, config, device, micro_batch, ranks), kernels
    )
    if ranks.is_main:
        key = machine_key(params, config, device, micro_batch)
        store_timings(key, _merge(cached_timings(key, cache) or [], timings), cache)
    choice = pick(timings, params.max_iters)
    if not choice.compile and any(t.compile for t in timings):
        # the compiled probe lost: its graphs would only hold memory (when it wins they stay,
        # and the run's torch.compile of the same model code reuses them instead of compiling)
        torch.compiler.reset()
    return Decision(choice, "measured", timings)


def _lookup(timings: list[Timing], choice: Choice) -> Timing:
    found = next((t for t in timings if t.choice == choice), None)
    if found is None:
        raise LookupError(choice)
    return found


def _merge(old: list[Timing], new: list[Timing]) -> list[Timing]:
    fresh = {t.choice for t in new}
    return [t for t in old if t.choice not in fresh] + new


@dataclass
class TrainingProbe:
    """Times one candidate: a fresh model of the run's shape, prepared as the run prepares its own
    (gptcore.distributed.prepare: activation checkpointing, fsdp or ddp over the run's processes, its
    optimizer), and the run's training step (gptcore.step.train_step: train.grad_accum_steps
    micro-batches of forward and backward, clip, optimizer step) on random tokens. The global RNG
    is left as it was, so a run measured and a run read from the cache train identically.

    Before a bf16 candidate's model is built, `matmul_slowdown` may rule it out (RULE_OUT), and
    an eager candidate after the first has its first step compared with `fastest_warm`, the
    fastest finished candidate's warm-up (SLOW_START). A compiled candidate's graphs are kept
    when it succeeds (`decide` drops them if it loses), so the run need not compile again.

    Under several processes every rank must call it with the same candidate, together: their
    steps are timed with the collectives in them, and each rank returns the same figures, the
    slowest rank's (a step waits for it), or a rank's error; rank 0's measurements rule out."""

    params: TrainParams
    config: GPTConfig
    device: torch.device
    micro_batch: int
    ranks: Ranks = field(default_factory=Ranks)
    clock: Callable[[], float] = time.perf_counter
    fastest_warm: float | None = None
    bf16_slowdown: float | None = None  # measured once, on the first bf16 candidate

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return self.clock()

    def _more(self, elapsed: float, times: list[float]) -> bool:
        """Whether to time another step: not once PROBE_SECONDS are spent or the last
        SETTLED_STEPS agree. Every rank takes each step (its collectives wait for all), so rank
        0's clock decides for all."""
        last = times[-SETTLED_STEPS:]
        settled = len(last) == SETTLED_STEPS and max(last) <= (1.0 + SETTLED) * min(last)
        return bool(from_main(elapsed < PROBE_SECONDS and not settled, self.ranks))

    def __call__(self, choice: Choice) -> Timing:
        devices = [self.device] if self.device.type == "cuda" else []
        failure: Exception | None = None
        with torch.random.fork_rng(devices=devices):
            try:
                timing = self._rule_out_bf16(choice) or self._time(choice)
            # an optional lever that does not work here (an Inductor error, a dtype the device
            # lacks) is a result: the candidate is out, the run goes on with the others
            except Exception as exc:
                failure = exc
                first_line = (str(exc).strip().splitlines() or [""])[0][:200]
                error = f"{type(exc).__name__}: {first_line}"
                timing = Timing(choice.dtype, choice.compile, 0.0, None, error, choice.attention)
                if choice.compile:
                    torch.compiler.reset()
        timing = _agreed(gather_to_all(timing, self.ranks))
        if timing.step_seconds is not None and not choice.compile:
            warm = timing.warm_seconds
            self.fastest_warm = warm if self.fastest_warm is None else min(self.fastest_warm, warm)
        if timing.error is not None and choice == Choice("float32", False):
            # the baseline every run can fall back to failed: that is the run's error, not a result
            if failure is not None:
                raise failure
            raise RuntimeError(f"another process failed the float32 step: {timing.error}")
        return timing

    def _rule_out_bf16(self, choice: Choice) -> Timing | None:
        """A Timing that leaves a bf16 candidate out, where bf16 matmuls of this model's width run
        RULE_OUT times slower than fp32's (measured once; rank 0's figure holds for all)."""
        if choice.dtype != "bfloat16" or self.params.dtype != "auto":
            return None  # a run told to train in bf16 is timed in it, however slow
        if self.bf16_slowdown is None:
            mine = matmul_slowdown(self.device, self.config.n_embd, self._now) if self.ranks.is_main else 0.0
            self.bf16_slowdown = float(from_main(mine, self.ranks))
        if self.bf16_slowdown < RULE_OUT:
            return None
        why = (
            f"{RULED_OUT}a bf16 autocast matmul of width {self.config.n_embd} took "
            f"{self.bf16_slowdown:.1f}x an fp32 one (not stepped: {RULE_OUT:g}x rules it out)"
        )
        return Timing(choice.dtype, choice.compile, 0.0, None, why, choice.attention)

    def _time(self, choice: Choice) -> Timing:
        torch.manual_seed(0)
        model = GPT(self.config).to(self.device)
        model.attention = choice.attention
        model.train()
        prepared = prepare(model, self.params, self.device, self.ranks, choice.autocast_dtype, choice.compile)
        gen = torch.Generator().manual_seed(0)
        size = (self.micro_batch, self.config.block_size)
        x, y = (
            torch.randint(0, self.config.vocab_size, size, generator=gen).to(self.device) for _ in range(2)
        )
        batches = [(x, y)] * self.params.grad_accum_steps
        loss_of = lm_loss(prepared.train_forward, self.device)

        def step() -> None:
            train_step(
                loss_of,
                batches,
                prepared.optimizer,
                model.parameters(),
                self.params.grad_clip,
                self.device,
                choice.autocast_dtype,
                ddp=prepared.ddp,
            )

        start = self._now()
        step()
        ceiling = None if choice.compile or self.fastest_warm is None else SLOW_START * self.fastest_warm
        if ceiling is not None:
            first = self._now() - start
            if from_main(first > ceiling, self.ranks):
                why = (
                    f"{RULED_OUT}its first step took {first:.1f} s, over {SLOW_START:g}x the fastest "
                    f"candidate's {WARM_STEPS} warm-up steps ({self.fastest_warm:.1f} s)"
                )
                return Timing(choice.dtype, choice.compile, first, None, why, choice.attention)
        for _ in range(WARM_STEPS - 1):
            step()
        warm = self._now() - start
        times: list[float] = []
        began = self._now()
        while len(times) < TIMED_STEPS and (len(times) < 2 or self._more(self._now() - began, times)):
            t0 = self._now()
            step()
            times.append(self._now() - t0)
        return Timing(choice.dtype, choice.compile, warm, statistics.median(times), None, choice.attention)


def matmul_slowdown(device: torch.device, width: int, now: Callable[[], float] = time.perf_counter) -> float:
    """How many times longer a matmul of a block's shape (MATMUL_ROWS x width by width x 4 width,
    an MLP's up-projection) takes under bf16 autocast than in fp32 on `device`: the median of
    repeats timed for about MATMUL_SECONDS each, after one untimed."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(MATMUL_ROWS, width, generator=gen).to(device)
    b = torch.randn(width, 4 * width, generator=gen).to(device)

    def median_seconds(dtype: torch.dtype | None) -> float:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            torch.mm(a, b)
            times: list[float] = []
            began = now()
            while len(times) < 3 or now() - began < MATMUL_SECONDS:
                t0 = now()
                torch.mm(a, b)
                times.append(now() - t0)
        return statistics.median(times)

    return median_seconds(torch.bfloat16) / median_seconds(None)


def _agreed(timings: list[Timing]) -> Timing:
    """One candidate's figures over all ranks: the first error, else the slowest rank's."""
    failed = next((t for t in timings if t.error is not None), None)
    if failed is not None:
        return failed
    return replace(
        timings[0],
        warm_seconds=max(t.warm_seconds for t in timings),
        step_seconds=max(cast(float, t.step_seconds) for t in timings),
    )
