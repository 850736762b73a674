"""train.dtype/compile/attention: auto: which candidates are timed, how the winner is picked, the
cache, the bounded probe, and that a resumed run keeps its checkpoint's choice."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest
import torch
from conftest import COUNTING_VOCAB as VOCAB
from support_train import BASE

from gptcore import autotune
from gptcore.autotune import Choice, Timing, TrainingProbe, decide, pick, search
from gptcore.model import GPTConfig
from gptcore.params import TrainParams
from gptcore.train import model_config, train

CPU = torch.device("cpu")
# dtype and compile left to measurement; the attention kernel too where a test says so
AUTO = dataclasses.replace(BASE, dtype="auto", compile="auto", attention="sdpa")
ALL_AUTO = dataclasses.replace(AUTO, attention="auto")
CONFIG = model_config(AUTO, VOCAB)
FP32, BF16 = Choice("float32", False), Choice("bfloat16", False)
FP32_C, BF16_C = Choice("float32", True), Choice("bfloat16", True)
FP32_X, BF16_X = Choice("float32", False, "explicit"), Choice("bfloat16", False, "explicit")
BF16_XC = Choice("bfloat16", True, "explicit")


def timing(choice: Choice, step: float | None, warm: float = 0.0, error: str | None = None) -> Timing:
    return Timing(choice.dtype, choice.compile, warm, step, error, choice.attention)


class FakeProbe:
    """Answers with fixed step times and records what it was asked to time."""

    def __init__(self, steps: dict[Choice, float], warm: dict[Choice, float] | None = None) -> None:
        self.steps, self.warm, self.asked = steps, warm or {}, []

    def __call__(self, choice: Choice) -> Timing:
        self.asked.append(choice)
        return timing(choice, self.steps[choice], self.warm.get(choice, 2 * self.steps[choice]))


# --- picking -------------------------------------------------------------------------------------


def test_pick_takes_the_cheapest_run_but_keeps_fp32_eager_on_a_near_tie() -> None:
    assert pick([timing(FP32, 1.0), timing(BF16, 0.6)], steps=1000) == BF16
    # 3% faster is within MARGIN: noise on a shared machine must not flip the precision
    assert pick([timing(FP32, 1.0), timing(BF16, 0.97)], steps=1000) == FP32


def test_pick_counts_the_compile_time_against_the_run_length() -> None:
    eager, compiled = timing(FP32, 0.10), timing(FP32_C, 0.08, warm=30.0)
    # 20 ms a step saved over 100 steps is 2 s: not worth a 30 s compile; over 10,000 steps it is
    assert pick([eager, compiled], steps=100) == FP32
    assert pick([eager, compiled], steps=10_000) == FP32_C


def test_pick_skips_failed_candidates_and_fails_when_none_ran() -> None:
    assert pick([timing(FP32, 1.0), timing(BF16_C, None, error="InductorError: x")], 1000) == FP32
    with pytest.raises(RuntimeError, match="InductorError"):
        pick([timing(FP32, None, error="InductorError: x")], 1000)


# --- which candidates are timed ------------------------------------------------------------------


def test_search_times_both_precisions_eagerly_then_compiles_only_the_faster() -> None:
    probe = FakeProbe({FP32: 1.0, BF16: 0.5, BF16_C: 0.4})
    timings = search(AUTO, CPU, probe)
    assert probe.asked == [FP32, BF16, BF16_C]
    assert [t.choice for t in timings] == [FP32, BF16, BF16_C]


def test_search_times_both_attention_kernels_in_each_precision_then_compiles_the_fastest() -> None:
    probe = FakeProbe({FP32: 1.0, FP32_X: 1.1, BF16: 0.8, BF16_X: 0.5, BF16_XC: 0.3})
    timings = search(ALL_AUTO, CPU, probe)
    assert probe.asked == [FP32, FP32_X, BF16, BF16_X, BF16_XC]
    assert pick(timings, steps=1000) == BF16_XC
    # a kernel the memory plan rules out is not tried
    probe = FakeProbe({FP32: 1.0, BF16: 0.8, BF16_C: 0.7})
    search(ALL_AUTO, CPU, probe, kernels=("sdpa",))
    assert probe.asked == [FP32, BF16, BF16_C]


def test_the_fused_kernel_is_kept_unless_the_explicit_one_is_clearly_faster() -> None:
    assert pick([timing(FP32, 1.0), timing(FP32_X, 0.97)], steps=1000) == FP32
    assert pick([timing(FP32, 1.0), timing(FP32_X, 0.9)], steps=1000) == FP32_X


def test_search_obeys_what_the_params_force() -> None:
    probe = FakeProbe({FP32: 1.0, FP32_C: 0.9})
    search(dataclasses.replace(AUTO, dtype="float32"), CPU, probe)
    assert probe.asked == [FP32, FP32_C]
    probe = FakeProbe({FP32: 1.0, BF16: 0.5})
    search(dataclasses.replace(AUTO, compile=False), CPU, probe)
    assert probe.asked == [FP32, BF16]
    # forced dtype and compile, the kernel left open: both kernels, compiled as forced
    probe = FakeProbe({BF16_C: 1.0, BF16_XC: 0.5})
    forced = dataclasses.replace(ALL_AUTO, dtype="bfloat16", compile=True)
    assert pick(search(forced, CPU, probe), 1000) == BF16_XC
    assert probe.asked == [BF16_C, BF16_XC]


def test_search_leaves_bf16_out_where_the_device_lacks_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    probe = FakeProbe({FP32: 1.0, FP32_C: 0.5})
    search(AUTO, torch.device("cuda"), probe)
    assert probe.asked == [FP32, FP32_C]


# --- deciding, and the cache ---------------------------------------------------------------------


def test_forced_dtype_and_compile_are_obeyed_without_timing(tmp_path: Path) -> None:
    def probe(choice: Choice) -> Timing:
        raise AssertionError("nothing may be timed")

    forced = dataclasses.replace(BASE, dtype="bfloat16", compile=True, attention="explicit")
    decision = decide(forced, CONFIG, CPU, 4, probe=probe, cache=tmp_path / "c.json")
    assert (decision.choice, decision.source) == (Choice("bfloat16", True, "explicit"), "params")
    assert not (tmp_path / "c.json").exists()


def test_decide_measures_once_then_reads_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "autotune.json"
    probe = FakeProbe({FP32: 1.0, BF16: 0.5, BF16_C: 0.49})
    first = decide(AUTO, CONFIG, CPU, 4, probe=probe, cache=cache)
    assert (first.choice, first.source) == (BF16, "measured")
    assert len(probe.asked) == 3
    again = decide(AUTO, CONFIG, CPU, 4, probe=probe, cache=cache)
    assert (again.choice, again.source) == (BF16, "cache")
    assert len(probe.asked) == 3, "a cached decision must not time anything again"
    assert again.timings == first.timings
    # another model shape is another key: timed afresh
    wider = GPTConfig(**{**CONFIG.to_dict(), "n_embd": 32})
    assert decide(AUTO, wider, CPU, 4, probe=probe, cache=cache).source == "measured"
    assert len(json.loads(cache.read_text())) == 2


def test_a_longer_run_redecides_from_the_cached_figures(tmp_path: Path) -> None:
    cache = tmp_path / "autotune.json"
    probe = FakeProbe({FP32: 0.10, BF16: 0.20, FP32_C: 0.08}, warm={FP32: 0.2, BF16: 0.4, FP32_C: 30.0})
    assert decide(dataclasses.replace(AUTO, max_iters=100), CONFIG, CPU, 4, probe, cache).choice == FP32
    long_run = decide(dataclasses.replace(AUTO, max_iters=10_000), CONFIG, CPU, 4, probe, cache)
    assert (long_run.choice, long_run.source) == (FP32_C, "cache")


def test_a_damaged_cache_is_measured_again_and_rewritten(tmp_path: Path) -> None:
    cache = tmp_path / "autotune.json"
    cache.write_text("{not json")
    decision = decide(AUTO, CONFIG, CPU, 4, probe=FakeProbe({FP32: 1.0, BF16: 2.0, FP32_C: 3.0}), cache=cache)
    assert (decision.choice, decision.source) == (FP32, "measured")
    assert len(json.loads(cache.read_text())) == 1


def test_cached_figures_serve_only_runs_of_the_same_micro_batch_threads_optimizer_and_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "autotune.json"
    probe = FakeProbe({FP32: 1.0, BF16: 0.5, BF16_C: 0.49})

    def source(params: TrainParams = AUTO, micro_batch: int = 4) -> str:
        return decide(params, CONFIG, CPU, micro_batch, probe=probe, cache=cache).source

    assert source() == "measured"
    # what the step time does not depend on: another length, seed or learning rate reads the cache
    assert source(dataclasses.replace(AUTO, max_iters=5_000, seed=1, learning_rate=1e-4)) == "cache"
    # what it does depend on: each is timed afresh, and the first settings still read theirs
    assert source(micro_batch=8) == "measured"
    assert source(dataclasses.replace(AUTO, optimizer="muon")) == "measured"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert source() == "measured"
    finally:
        torch.set_num_threads(threads)
    with monkeypatch.context() as m:
        m.setattr(torch, "__version__", "99.0.0")  # an upgraded torch
        assert source() == "measured"
    assert source() == "cache"


# --- the real probe ------------------------------------------------------------------------------


def test_the_probe_times_real_steps_and_leaves_the_rng_alone() -> None:
    before = torch.get_rng_state()
    probe = TrainingProbe(AUTO, CONFIG, CPU, 4)
    timings = [probe(FP32), probe(FP32_X)]  # (bf16: where a matmul says it is worth a step, below)
    assert all(t.step_seconds is not None and t.step_seconds > 0 for t in timings)
    assert all(t.warm_seconds > 0 for t in timings)
    assert torch.equal(torch.get_rng_state(), before)


def test_the_probe_is_bounded_when_steps_are_slow() -> None:
    ticks = itertools.count(step=100.0)  # every clock reading is 100 s later: each step "takes" ages
    timed = TrainingProbe(AUTO, CONFIG, CPU, 4, clock=lambda: next(ticks))(FP32)
    assert timed.step_seconds == 100.0
    # two warm-up steps and two timed ones, then PROBE_SECONDS is spent: 4 steps, not 2 + TIMED_STEPS
    assert next(ticks) / 100.0 < 2 * (autotune.WARM_STEPS + autotune.TIMED_STEPS)


def test_timing_stops_once_the_steps_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    forwards = count_forwards(monkeypatch)
    ticks = itertools.count(step=0.25)  # every step "takes" the same time: settled after three
    timed = TrainingProbe(AUTO, CONFIG, CPU, 4, clock=lambda: next(ticks))(FP32)
    assert timed.step_seconds == 0.25
    assert (
        len(forwards)
        == autotune.WARM_STEPS + autotune.SETTLED_STEPS
        < autotune.WARM_STEPS + autotune.TIMED_STEPS
    )
    # steps that keep changing are timed up to TIMED_STEPS
    forwards.clear()
    uneven = itertools.accumulate(itertools.cycle([0.1, 0.2, 0.1, 0.3]))
    TrainingProbe(AUTO, CONFIG, CPU, 4, clock=lambda: next(uneven))(FP32)
    assert len(forwards) == autotune.WARM_STEPS + autotune.TIMED_STEPS


def count_forwards(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from gptcore.model import GPT

    calls: list[int] = []
    real = GPT.forward

    def counted(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GPT, "forward", counted)
    return calls


def test_bf16_is_not_stepped_where_its_matmuls_are_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    measured: list[int] = []

    def slow(device, width, now):
        measured.append(width)
        return 40.0

    monkeypatch.setattr(autotune, "matmul_slowdown", slow)
    forwards = count_forwards(monkeypatch)
    probe = TrainingProbe(AUTO, CONFIG, CPU, 4)
    out, out_x = probe(BF16), probe(BF16_X)
    assert forwards == [] and measured == [CONFIG.n_embd]  # one matmul measurement, no step
    assert out.step_seconds is None and out.ruled_out and "40.0x an fp32 one" in out.error
    assert out_x.ruled_out and not timing(FP32_C, None, error="RuntimeError: x").ruled_out
    # the search goes on with fp32, compiles the fastest that stepped, and says why bf16 is out
    timings = search(AUTO, CPU, FakeProbeWith(probe, {FP32: 1.0, FP32_C: 0.5}))
    assert [t.choice for t in timings] == [FP32, BF16, FP32_C]
    assert pick(timings, 100) == FP32_C
    summary = autotune.Decision(FP32_C, "measured", timings).summary(100)
    assert "eager bf16 autocast, sdpa attention" in summary and "ruled out: a bf16 autocast matmul" in summary
    assert "failed" not in summary


class FakeProbeWith:
    """Fixed step times for the choices given; the others go to a real probe."""

    def __init__(self, probe: TrainingProbe, steps: dict[Choice, float]) -> None:
        self.probe, self.steps = probe, steps

    def __call__(self, choice: Choice) -> Timing:
        if choice in self.steps:
            return timing(choice, self.steps[choice], 2 * self.steps[choice])
        return self.probe(choice)


def test_bf16_is_stepped_where_its_matmuls_keep_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autotune, "matmul_slowdown", lambda device, width, now: 1.5)
    timed = TrainingProbe(AUTO, CONFIG, CPU, 4)(BF16)
    assert timed.step_seconds is not None and timed.error is None


def test_the_matmul_measurement_runs_on_this_machine() -> None:
    probe = TrainingProbe(AUTO, CONFIG, CPU, 4)
    out = probe(BF16)
    assert probe.bf16_slowdown is not None and probe.bf16_slowdown > 0
    # on a CPU without bf16 instructions it is ruled out, with the figure; elsewhere it stepped
    assert (out.step_seconds is None) == (probe.bf16_slowdown >= autotune.RULE_OUT)
    if out.step_seconds is None:
        assert out.ruled_out and f"{probe.bf16_slowdown:.1f}x" in str(out.error)


def test_an_eager_candidate_far_slower_at_its_first_step_is_stopped_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    forwards = count_forwards(monkeypatch)
    # as if an earlier candidate had warmed up in a microsecond: this one's first step is far over
    out = TrainingProbe(AUTO, CONFIG, CPU, 4, fastest_warm=1e-6)(FP32_X)
    assert out.step_seconds is None and out.ruled_out and "its first step took" in str(out.error)
    assert len(forwards) == 1 and out.warm_seconds > 0
    # the first candidate sets the bar for the next: an equal one is timed in full
    probe = TrainingProbe(AUTO, CONFIG, CPU, 4)
    assert probe(FP32).step_seconds is not None and probe.fastest_warm is not None
    assert probe(FP32_X).step_seconds is not None


def test_a_compiled_candidate_is_not_stopped_at_its_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.compiler, "reset", lambda: None)
    out = TrainingProbe(AUTO, CONFIG, CPU, 4, fastest_warm=1e-6)(FP32_C)
    assert out.step_seconds is not None and out.warm_seconds > 1e-6 * autotune.SLOW_START


def test_decide_keeps_the_compiled_probe_only_when_it_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resets: list[int] = []
    monkeypatch.setattr(torch.compiler, "reset", lambda: resets.append(1))
    wins = FakeProbe({FP32: 1.0, BF16: 1.0, FP32_C: 0.1}, {FP32_C: 2.0})
    assert decide(AUTO, CONFIG, CPU, 4, probe=wins, cache=tmp_path / "a.json").choice == FP32_C
    assert resets == []  # the run's torch.compile reuses the probe's graphs
    loses = FakeProbe({FP32: 1.0, BF16: 1.0, FP32_C: 0.99}, {FP32_C: 50.0})
    assert decide(AUTO, CONFIG, CPU, 4, probe=loses, cache=tmp_path / "b.json").choice == FP32
    assert resets == [1]


def test_a_run_that_reuses_the_compiled_probe_trains_as_a_forced_compiled_run(
    stores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = dataclasses.replace(AUTO, dtype="float32", max_iters=6)
    monkeypatch.setattr(autotune, "cache_path", lambda: tmp_path / "cache.json")
    monkeypatch.setattr(autotune, "pick", lambda timings, steps: FP32_C)  # compiled wins, whatever the times
    torch.compiler.reset()
    measured = train(p, *stores, progress=False)
    assert (measured.precision.choice, measured.precision.source) == (FP32_C, "measured")
    torch.compiler.reset()  # compiled afresh
    forced = train(dataclasses.replace(p, compile=True), *stores, progress=False)
    assert forced.precision.source == "params"
    state, forced_state = measured.model.state_dict(), forced.model.state_dict()
    assert all(torch.equal(state[k], forced_state[k]) for k in state)


def test_a_candidate_that_fails_is_reported_and_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    probe = TrainingProbe(AUTO, CONFIG, CPU, 4)
    failed = probe(FP32_C)
    assert failed.step_seconds is None and failed.error == "RuntimeError: no C++ compiler"
    assert probe(FP32).step_seconds is not None


# --- in training ---------------------------------------------------------------------------------


def test_train_records_the_measured_choice_and_a_resume_keeps_the_checkpoints(
    stores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = dataclasses.replace(AUTO, compile=False, max_iters=12, checkpoint_interval=5, dropout=0.1)
    monkeypatch.setattr(autotune, "cache_path", lambda: tmp_path / "cache.json")
    monkeypatch.setattr(autotune, "TrainingProbe", lambda *a: FakeProbe({FP32: 1.0, BF16: 0.5}))
    ckpt = tmp_path / "checkpoint.pt"

    class Stop(Exception):
        pass

    def stop_at_10(step: int, metrics: dict[str, float]) -> None:
        if step == 10:
            raise Stop

    with pytest.raises(Stop):
        train(p, *stores, on_eval=stop_at_10, progress=False, checkpoint=ckpt)
    # the machine now favours fp32: a fresh run would switch, the resumed one must not
    monkeypatch.setattr(autotune, "cache_path", lambda: tmp_path / "other-cache.json")
    monkeypatch.setattr(autotune, "TrainingProbe", lambda *a: FakeProbe({FP32: 0.5, BF16: 1.0}))
    resumed = train(p, *stores, progress=False, checkpoint=ckpt)
    assert resumed.resumed_from == 10
    assert (resumed.precision.choice, resumed.precision.source) == (BF16, "checkpoint")
    assert resumed.precision.to_dict()["candidates"][1]["step_seconds"] == 0.5
    forced = train(dataclasses.replace(p, dtype="bfloat16"), *stores, progress=False)
    assert forced.precision.source == "params"
    for key, value in forced.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    fresh = train(p, *stores, progress=False)
    assert (fresh.precision.choice, fresh.precision.source) == (FP32, "measured")


def test_train_trains_with_the_attention_kernel_auto_picks_and_records_it(
    stores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = dataclasses.replace(ALL_AUTO, compile=False, max_iters=12)
    monkeypatch.setattr(autotune, "cache_path", lambda: tmp_path / "cache.json")
    monkeypatch.setattr(
        autotune, "TrainingProbe", lambda *a: FakeProbe({FP32: 1.0, FP32_X: 0.5, BF16: 2.0, BF16_X: 2.0})
    )
    picked = train(p, *stores, progress=False)
    assert (picked.precision.choice, picked.model.attention) == (FP32_X, "explicit")
    assert picked.precision.to_dict()["attention"] == "explicit"
    assert "eager fp32, explicit attention" in picked.precision.summary(12)
    # the same run forced to the explicit kernel trains the same model; forced to the fused one,
    # a model equal to rounding but not to the bit: the kernel really was the explicit one
    forced = train(dataclasses.replace(p, dtype="float32", attention="explicit"), *stores, progress=False)
    fused = train(dataclasses.replace(p, dtype="float32", attention="sdpa"), *stores, progress=False)
    assert forced.precision.source == "params" and fused.model.attention == "sdpa"
    state, forced_state, fused_state = (r.model.state_dict() for r in (picked, forced, fused))
    assert all(torch.equal(state[k], forced_state[k]) for k in state)
    assert not all(torch.equal(state[k], fused_state[k]) for k in state)
    for k in state:
        torch.testing.assert_close(state[k], fused_state[k], rtol=1e-3, atol=1e-4)


def test_a_checkpoint_from_before_the_attention_choice_resumes_with_the_fused_kernel() -> None:
    saved = {"dtype": "bfloat16", "compile": True, "source": "measured"}
    saved["candidates"] = [
        {"dtype": "bfloat16", "compile": True, "warm_seconds": 20.0, "step_seconds": 0.2, "error": None}
    ]
    decision = autotune.Decision.from_dict(saved, "checkpoint")
    assert decision.choice == BF16_C and decision.timings[0].choice == BF16_C


def test_auto_does_not_try_the_explicit_kernel_where_its_memory_plan_would_not_fit(
    stores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gptcore import train as train_module
    from gptcore.memory import HEADROOM

    # block 64: each head's 64 x 64 weights make the explicit kernel's plan clearly the larger
    p = dataclasses.replace(
        ALL_AUTO, compile=False, max_iters=2, dtype="float32", block_size=64, batch_size=8
    )
    config = model_config(p, VOCAB)
    fused, explicit = (train_module.memory_plan(p, config, CPU, explicit=e).total for e in (False, True))
    assert explicit > 1.2 * fused
    # a device with room for the fused kernel's plan and not for the explicit one's
    room = (fused + explicit) / 2 / HEADROOM
    monkeypatch.setattr(train_module, "device_memory", lambda *a: (int(room), "a small test device"))
    monkeypatch.setattr(autotune, "cache_path", lambda: tmp_path / "cache.json")
    probe = FakeProbe({FP32: 1.0, FP32_X: 0.1})
    monkeypatch.setattr(autotune, "TrainingProbe", lambda *a: probe)
    result = train(p, *stores, progress=False)
    assert probe.asked == [FP32]
    assert (result.precision.choice, result.model.attention) == (FP32, "sdpa")
    # with room for both, the faster explicit kernel is tried and taken
    monkeypatch.setattr(train_module, "device_memory", lambda *a: (int(2 * explicit), "a bigger one"))
    monkeypatch.setattr(autotune, "cache_path", lambda: tmp_path / "other-cache.json")
    probe.asked.clear()
    assert train(p, *stores, progress=False).precision.choice == FP32_X
    assert probe.asked == [FP32, FP32_X]


def test_a_run_told_to_train_in_bf16_is_timed_in_it_however_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autotune, "matmul_slowdown", lambda device, width, now: 40.0)
    forced = dataclasses.replace(AUTO, dtype="bfloat16", attention="auto", compile=False)
    timings = search(forced, CPU, TrainingProbe(forced, CONFIG, CPU, 4))
    assert {t.dtype for t in timings} == {"bfloat16"}
    assert all(t.step_seconds is not None for t in timings)  # the attention kernels still compared
