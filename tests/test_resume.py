"""Checkpoints and exact resume: a run interrupted at any moment, even by SIGKILL, ends with the
same weights and the same logged losses as a run never stopped; a checkpoint of another run is
never resumed; a non-finite loss stops training naming the step and keeping the last checkpoint;
checkpoints load safely."""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import counting_documents, write_counting_store
from support_models import CreatesMarkerWhenUnpickled
from support_stage import STAGE_TRAIN, finish, kill_after_checkpoints, logged, stage_workspace, start_stage
from support_train import BASE, assert_same_weights, curve, run

import gptcore.train as train_module
from gptcore.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    resume_mismatch,
    run_identity,
    save_checkpoint,
)
from gptcore.data.token_store import TokenStore
from gptcore.device import model_flops_utilization, peak_flops
from gptcore.errors import DataError
from gptcore.model import GPT
from gptcore.train import NonFiniteLossError, TrainResult

# dropout and two micro-batches a step: both draw random numbers, so a resume must restore them
P = dataclasses.replace(BASE, max_iters=24, dropout=0.1, grad_accum_steps=2, checkpoint_interval=5)


@pytest.fixture(scope="module")
def uninterrupted(stores: tuple[TokenStore, TokenStore]) -> tuple[TrainResult, list]:
    result, evals = run(P, stores)
    assert result is not None
    return result, evals


# --- in-process: interrupted, then resumed -------------------------------------------------------


@pytest.mark.parametrize("stop_at", [10, 20])
def test_an_interrupted_run_resumes_to_bit_identical_weights_and_losses(
    stop_at: int, stores, uninterrupted, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "checkpoint.pt"
    _, before = run(P, stores, ckpt, stop_at=stop_at)
    assert load_checkpoint(ckpt)["step"] == stop_at  # written at the end of step stop_at - 1
    result, evals = run(P, stores, ckpt)
    assert result is not None and result.resumed_from == stop_at
    assert f"resuming from {ckpt} at step {stop_at} of {P.max_iters}" in capsys.readouterr().out
    assert_same_weights(result.model, uninterrupted[0].model)
    # the resumed run replays the evaluations the checkpoint holds, then logs the rest
    assert curve(evals) == curve(uninterrupted[1])
    assert (result.final_train_loss, result.final_val_loss) == (
        uninterrupted[0].final_train_loss,
        uninterrupted[0].final_val_loss,
    )
    assert result.tokens_seen == uninterrupted[0].tokens_seen


def test_a_run_interrupted_twice_still_ends_identical(stores, uninterrupted, tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint.pt"
    run(P, stores, ckpt, stop_at=5)
    run(P, stores, ckpt, stop_at=15)
    result, evals = run(P, stores, ckpt)
    assert result is not None and result.resumed_from == 15
    assert_same_weights(result.model, uninterrupted[0].model)
    assert curve(evals) == curve(uninterrupted[1])


def test_the_last_checkpoint_is_written_at_max_iters_and_resumes_to_the_final_evaluation(
    stores, uninterrupted, tmp_path: Path
) -> None:
    ckpt = tmp_path / "checkpoint.pt"
    p = dataclasses.replace(P, checkpoint_interval=P.max_iters)
    _, _ = run(p, stores, ckpt, stop_at=P.max_iters)  # killed during the final evaluation
    assert load_checkpoint(ckpt)["step"] == P.max_iters
    result, evals = run(p, stores, ckpt)
    assert result is not None and result.resumed_from == P.max_iters
    assert curve(evals) == curve(uninterrupted[1])
    assert_same_weights(result.model, uninterrupted[0].model)


@pytest.mark.slow
def test_a_compiled_run_resumes_bit_identically_too(stores, tmp_path: Path) -> None:
    # train.compile is on by default: Inductor's dropout must draw from the restored RNG state
    p = dataclasses.replace(P, compile=True)
    straight, straight_evals = run(p, stores)
    ckpt = tmp_path / "checkpoint.pt"
    run(p, stores, ckpt, stop_at=15)
    resumed, evals = run(p, stores, ckpt)
    assert straight is not None and resumed is not None and resumed.resumed_from == 15
    assert_same_weights(resumed.model, straight.model)
    assert curve(evals) == curve(straight_evals)


def test_log_and_checkpoint_intervals_may_change_between_segments(
    stores, uninterrupted, tmp_path: Path
) -> None:
    ckpt = tmp_path / "checkpoint.pt"
    run(P, stores, ckpt, stop_at=10)
    result, evals = run(dataclasses.replace(P, log_interval=3, checkpoint_interval=7), stores, ckpt)
    assert result is not None and result.resumed_from == 10
    assert_same_weights(result.model, uninterrupted[0].model)
    assert curve(evals) == curve(uninterrupted[1])


def test_no_checkpoint_is_written_when_the_interval_is_zero(stores, tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint.pt"
    run(dataclasses.replace(P, checkpoint_interval=0), stores, ckpt, stop_at=20)
    assert not ckpt.exists()


def test_checkpoints_leave_no_temporary_files(stores, tmp_path: Path) -> None:
    ckpt = tmp_path / "models" / "checkpoint.pt"
    run(P, stores, ckpt)
    assert [p.name for p in ckpt.parent.iterdir()] == ["checkpoint.pt"]


# --- another run's checkpoint --------------------------------------------------------------------


def test_a_checkpoint_of_other_params_is_not_resumed_and_the_log_says_why(
    stores, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "checkpoint.pt"
    run(P, stores, ckpt, stop_at=15)
    other = dataclasses.replace(P, learning_rate=5.0e-3)
    result, evals = run(other, stores, ckpt)
    out = capsys.readouterr().out
    assert f"not resuming {ckpt}: it is from another run (train.learning_rate was 0.01, is 0.005)" in out
    assert "starting fresh" in out
    assert result is not None and result.resumed_from is None
    fresh, fresh_evals = run(other, stores)
    assert fresh is not None
    assert_same_weights(result.model, fresh.model)
    assert curve(evals) == curve(fresh_evals)


def test_a_checkpoint_of_other_token_data_is_not_resumed(
    stores, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "checkpoint.pt"
    run(P, stores, ckpt, stop_at=15)
    other_train = write_counting_store(tmp_path / "train.h5", counting_documents(40, seed=9))
    result, _ = run(P, (other_train, stores[1]), ckpt)
    assert result is not None and result.resumed_from is None
    assert f"{other_train.path} has other tokens" in capsys.readouterr().out


def test_run_identity_ignores_only_intervals_and_the_process_layout(stores) -> None:
    # the process count does not change the data stream: every rank draws the same global batch
    ignored = {"log_interval", "checkpoint_interval", "nproc_per_node", "nnodes", "rdzv_endpoint"}
    # nor how the processes hold the model: sharded or whole, activations kept or recomputed
    ignored |= {"parallel", "activation_checkpointing"}
    data = {str(store.path): store.sha256() for store in stores}
    base = run_identity(P, data)
    for key, value in dataclasses.asdict(P).items():
        changed = run_identity(dataclasses.replace(P, **{key: _other(value)}), data)
        if key in ignored:
            assert resume_mismatch(base, changed) is None, key
        else:
            assert f"train.{key} was" in (resume_mismatch(base, changed) or ""), key


def _other(value: Any) -> Any:
    if value is None:  # an optional path (train.init_from) or name (train.preset)
        return "elsewhere"
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    return value + "x"


def test_a_checkpoint_without_a_run_identity_is_not_resumed() -> None:
    assert resume_mismatch(None, {"params": {}, "data": {}}) == "it records no run identity"


# --- non-finite loss -----------------------------------------------------------------------------


class PoisonedGPT(GPT):
    """A GPT whose training loss turns NaN on its n-th training forward pass."""

    poison_at = -1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def forward(self, idx, targets=None, explicit=False):  # type: ignore[override]
        logits, loss = super().forward(idx, targets, explicit)
        if self.training and loss is not None:
            if self.calls == self.poison_at:
                loss = loss * float("nan")
            self.calls += 1
        return logits, loss


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(train_module, "GPT", PoisonedGPT)

    def at_step(step: int, p: Any = P) -> None:
        PoisonedGPT.poison_at = step * p.grad_accum_steps

    return at_step


def test_a_non_finite_loss_stops_training_naming_the_step_and_keeping_the_checkpoint(
    stores, poisoned, tmp_path: Path
) -> None:
    ckpt = tmp_path / "checkpoint.pt"
    poisoned(12)
    with pytest.raises(NonFiniteLossError) as err:
        run(P, stores, ckpt)
    message = str(err.value)
    assert "the train loss became nan at step 12" in message
    assert f"the last good checkpoint, {ckpt} (step 10), is kept" in message
    kept = load_checkpoint(ckpt)
    assert kept["step"] == 10
    assert all(torch.isfinite(t).all() for t in kept["model"].values())


def test_a_non_finite_loss_before_any_checkpoint_says_so(stores, poisoned, tmp_path: Path) -> None:
    poisoned(3)
    with pytest.raises(NonFiniteLossError, match="at step 3: no checkpoint was written before it"):
        run(P, stores, tmp_path / "checkpoint.pt")
    assert not (tmp_path / "checkpoint.pt").exists()


def test_a_non_finite_loss_is_caught_before_a_checkpoint_could_save_it(
    stores, poisoned, tmp_path: Path
) -> None:
    # the poisoned step is the last before a checkpoint: it must be checked before the write
    ckpt = tmp_path / "checkpoint.pt"
    poisoned(9)
    with pytest.raises(NonFiniteLossError, match=r"at step 9: the last good checkpoint, .* \(step 5\)"):
        run(P, stores, ckpt)
    assert load_checkpoint(ckpt)["step"] == 5


# --- safe loading ----------------------------------------------------------------------------------


@pytest.fixture
def checkpoint_file(stores, tmp_path: Path) -> Path:
    ckpt = tmp_path / "checkpoint.pt"
    run(P, stores, ckpt, stop_at=10)
    return ckpt


def test_a_checkpoint_loads_with_weights_only(checkpoint_file: Path) -> None:
    payload = torch.load(checkpoint_file, weights_only=True)
    assert payload["format"] == CHECKPOINT_FORMAT
    assert {"model", "optimizer", "rng", "step", "run", "history"} <= set(payload)


def test_a_tampered_checkpoint_is_refused_not_resumed(checkpoint_file: Path, stores) -> None:
    payload = torch.load(checkpoint_file, weights_only=True)
    payload["model"]["wte.weight"][0, 0] += 1.0
    torch.save(payload, checkpoint_file)
    with pytest.raises(DataError, match="was altered or damaged after it was written"):
        run(P, stores, checkpoint_file)


def test_a_file_that_is_not_a_checkpoint_is_refused_naming_it(tmp_path: Path, stores) -> None:
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"model": {}}, ckpt)
    with pytest.raises(
        DataError, match=rf"{ckpt} is not a gptcore checkpoint \(no '{CHECKPOINT_FORMAT}' marker\)"
    ):
        run(P, stores, ckpt)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_checkpoint_carrying_code_is_refused_without_running_it(tmp_path: Path, stores) -> None:
    ckpt = tmp_path / "checkpoint.pt"
    marker = tmp_path / "pwned"
    ckpt.write_bytes(pickle.dumps({"format": CHECKPOINT_FORMAT, "model": CreatesMarkerWhenUnpickled(marker)}))
    with pytest.raises(DataError, match="is not a gptcore checkpoint"):
        run(P, stores, ckpt)
    assert not marker.exists()


def test_save_checkpoint_refuses_values_it_cannot_check(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="cannot digest a object"):
        save_checkpoint(tmp_path / "c.pt", {"step": object()})
    assert not list(tmp_path.iterdir())


# --- CUDA paths, exercised on CPU ----------------------------------------------------------------


def test_mfu_is_model_flops_over_the_device_peak() -> None:
    # GPT-2 124M at block 1024: 6N + 12*L*H*Q*T per token (N without position embeddings)
    per_token = 6 * 124_337_664 + 12 * 12 * 12 * 64 * 1024
    assert model_flops_utilization(per_token, 400_000, 989e12) == pytest.approx(per_token * 4e5 / 989e12)
    assert model_flops_utilization(per_token, 400_000, None) is None


@pytest.mark.parametrize(
    "name, peak",
    [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA A100-SXM4-40GB", 312e12)],
)
def test_peak_flops_of_known_gpus_in_bf16(name: str, peak: float, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops(torch.device("cuda"), torch.bfloat16) == peak
    assert peak_flops(torch.device("cuda"), None) is None  # fp32: no tensor-core peak to compare with


def test_peak_flops_is_unknown_on_cpu_and_unlisted_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    assert peak_flops(torch.device("cpu"), torch.bfloat16) is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    assert peak_flops(torch.device("cuda"), torch.bfloat16) is None


def test_evaluations_log_throughput_and_learning_rate_but_no_cuda_figures_on_cpu(uninterrupted) -> None:
    result, evals = uninterrupted
    steps = [s for s, _ in evals]
    assert steps == [0, 5, 10, 15, 20, 24]
    assert "perf/tokens_per_second" not in evals[0][1]  # nothing trained yet
    for _, metrics in evals[1:]:
        assert metrics["perf/tokens_per_second"] > 0
        assert "perf/mfu" not in metrics and "perf/peak_memory_gib" not in metrics
    assert result.mfu is None and result.peak_memory_bytes is None


# --- the stage, killed for real ----------------------------------------------------------------------


@pytest.mark.slow
def test_the_train_stage_stops_on_a_non_finite_loss_with_no_model_and_the_checkpoint_kept(
    tmp_path: Path,
) -> None:
    ws = stage_workspace(tmp_path / "ws")
    params = yaml.safe_load((ws / "params.yaml").read_text(encoding="utf-8"))
    # an absurd step size: the first update throws the weights far enough to overflow the logits
    params["train"].update(learning_rate=1.0e30, min_lr=0.0, warmup_iters=0, checkpoint_interval=1)
    (ws / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    proc = start_stage(ws)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out
    # the loss (checked every log_interval) or the weights (checked before a checkpoint is
    # written) turn non-finite first, depending on the model family; either names the kept checkpoint
    found = re.search(
        r"error: the (?:train loss became nan|weights became non-finite) at step (\d+): the last good "
        r"checkpoint, models/checkpoint\.pt \(step (\d+)\), is kept",
        out,
    )
    assert found, out
    assert int(found.group(2)) <= int(found.group(1))
    assert "Traceback" not in out
    assert not (ws / "models" / "model.pt").exists()
    assert not (ws / "reports" / "train.json").exists()
    assert load_checkpoint(ws / "models" / "checkpoint.pt")["step"] >= 1


@pytest.mark.slow
def test_the_train_stage_killed_with_sigkill_resumes_to_identical_weights_and_curves(tmp_path: Path) -> None:
    straight = stage_workspace(tmp_path / "straight")
    finish(straight)
    killed = stage_workspace(tmp_path / "killed")
    kill_after_checkpoints(killed, writes=1, extra_seconds=0.3)  # mid-interval: that work is redone
    ckpt = killed / "models" / "checkpoint.pt"
    first = load_checkpoint(ckpt)["step"]
    assert 10 <= first < STAGE_TRAIN["max_iters"]
    out = kill_after_checkpoints(killed, writes=2, extra_seconds=0.0)
    assert f"resuming from models/checkpoint.pt at step {first}" in out
    second = load_checkpoint(ckpt)["step"]
    assert first < second < STAGE_TRAIN["max_iters"]
    out = finish(killed)
    assert f"resuming from models/checkpoint.pt at step {second} of {STAGE_TRAIN['max_iters']}" in out

    assert (killed / "models" / "model.pt").read_bytes() == (straight / "models" / "model.pt").read_bytes()
    for name in ("train/loss", "val/loss", "lr"):
        assert logged(killed, name) == logged(straight, name), name
    assert [s for s, _ in logged(killed, "val/loss")] == [str(s) for s in range(0, 61, 10)]
    # the report is an output: the same bytes however often the run was stopped; where it
    # started again is telemetry
    report = killed / "reports" / "train.json"
    assert report.read_bytes() == (straight / "reports" / "train.json").read_bytes()
    assert json.loads(report.read_text())["steps"] == STAGE_TRAIN["max_iters"]
    telemetry = [json.loads((ws / "reports/telemetry/train.json").read_text()) for ws in (straight, killed)]
    assert (telemetry[0]["start_step"], telemetry[1]["start_step"]) == (0, second)
    # finished: the checkpoint is gone, and no temporary file was left by the kills
    assert sorted(p.name for p in (killed / "models").iterdir()) == ["model.pt"]


def test_a_muon_run_resumes_bit_identically(stores, tmp_path: Path) -> None:
    # Muon keeps its own momentum buffers beside AdamW's moments: both must come back
    p = dataclasses.replace(P, optimizer="muon")
    whole, whole_evals = run(p, stores)
    assert whole is not None
    ckpt = tmp_path / "checkpoint.pt"
    run(p, stores, ckpt, stop_at=10)
    assert set(load_checkpoint(ckpt)["optimizer"]) == {"adamw", "muon"}
    result, evals = run(p, stores, ckpt)
    assert result is not None and result.resumed_from == 10
    assert_same_weights(result.model, whole.model)
    assert curve(evals) == curve(whole_evals)
