"""Data-parallel training: the train stage under torchrun, 2 processes with gloo on this CPU.

Two processes must train like one on the same global batch (same loss curve within float
rounding), resume exactly from a checkpoint after a kill, and fail as a whole, never hang, when
one rank fails."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from support_stage import TWO, finish, kill_after_checkpoints, logged, stage_env, stage_workspace
from support_train import BASE, train_section

from gptcore.checkpoint import load_model
from gptcore.distributed import Ranks, needs_torchrun, torchrun_argv
from gptcore.params import ParamsError, parse_section

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")

# --- units ---------------------------------------------------------------------------------------


def test_ranks_come_from_torchruns_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert Ranks.from_env() == Ranks(0, 0, 1, 1)
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    ranks = Ranks.from_env()
    assert ranks == Ranks(5, 1, 8, 4) and ranks.distributed and not ranks.is_main


def test_each_rank_takes_its_own_equal_share_of_the_global_batch() -> None:
    shares = [Ranks(r, r, 4, 4).rows(32) for r in range(4)]
    assert [(s.start, s.stop) for s in shares] == [(0, 8), (8, 16), (16, 24), (24, 32)]
    assert Ranks().rows(32) == slice(0, 32)


def test_one_process_needs_no_torchrun_several_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    assert not needs_torchrun(BASE)
    assert needs_torchrun(dataclasses.replace(BASE, nproc_per_node=2))
    monkeypatch.setenv("RANK", "0")  # already a torchrun worker: never launch again
    assert not needs_torchrun(dataclasses.replace(BASE, nproc_per_node=2))


def test_torchrun_command_for_one_node_and_for_several() -> None:
    one = torchrun_argv(dataclasses.replace(BASE, nproc_per_node=4), "stages.train")
    assert one == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=4",
        "--standalone",
        "-m",
        "stages.train",
    ]
    many = torchrun_argv(
        dataclasses.replace(BASE, nproc_per_node=8, nnodes=2, rdzv_endpoint="n1:29400"), "stages.train"
    )
    assert {"--nnodes=2", "--master_addr=n1", "--master_port=29400"} <= set(many)
    assert "--standalone" not in many and not any(a.startswith("--node_rank") for a in many)


def test_a_batch_the_processes_cannot_share_evenly_is_refused() -> None:
    with pytest.raises(ParamsError, match=r"train.batch_size = 4 is invalid: must be divisible by .* = 3"):
        parse_section("train", train_section(batch_size=4, nproc_per_node=3))


def test_several_nodes_need_a_rendezvous_endpoint() -> None:
    with pytest.raises(ParamsError, match="train.rdzv_endpoint = 'somewhere' is invalid: must be host:port"):
        parse_section("train", train_section(nnodes=2, rdzv_endpoint="somewhere"))


# --- the stage under torchrun ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    base = tmp_path_factory.mktemp("ddp")
    runs = {}
    for n in (1, 2):
        ws = stage_workspace(base / f"n{n}", **{**TWO, "nproc_per_node": n})
        out = finish(ws)
        if n == 2:
            assert "train: 2 processes: torch.distributed.run --nproc_per_node=2 --standalone" in out
        runs[n] = ws
    return runs


@pytest.mark.slow
def test_two_processes_give_the_loss_curve_of_one_on_the_same_global_batch(
    one_and_two: dict[int, Path],
) -> None:
    for name in ("train/loss", "val/loss"):
        one, two = (logged(one_and_two[n], name) for n in (1, 2))
        assert [s for s, _ in one] == [s for s, _ in two] == [str(s) for s in range(0, 41, 10)]
        for (_, a), (_, b) in zip(one, two, strict=True):
            assert float(b) == pytest.approx(float(a), rel=1e-5, abs=1e-6), name


@pytest.mark.slow
def test_muon_under_two_processes_ends_with_the_weights_of_one(tmp_path: Path) -> None:
    # every rank steps Muon on the same all-reduced gradients: its orthogonalised updates agree
    runs = {
        n: stage_workspace(
            tmp_path / f"n{n}", **{**TWO, "nproc_per_node": n, "optimizer": "muon", "max_iters": 10}
        )
        for n in (1, 2)
    }
    for ws in runs.values():
        finish(ws)
    one, _, _ = load_model(runs[1] / "models" / "model.pt")
    two, _, _ = load_model(runs[2] / "models" / "model.pt")
    # Newton-Schulz runs in bf16: gradients all-reduced in another summation order round to
    # slightly other orthogonalised updates, so the two runs agree to bf16 precision, not fp32's
    # (measured: at most 3.6e-3 after 10 steps, against Muon steps of 0.02 a step); the curves agree
    for (name, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0.02 / 2, msg=name)
    for name in ("train/loss", "val/loss"):
        for (_, a), (_, b) in zip(*(logged(runs[n], name) for n in (1, 2)), strict=True):
            assert float(b) == pytest.approx(float(a), rel=1e-3), name


@pytest.mark.slow
def test_two_processes_end_with_the_weights_of_one(one_and_two: dict[int, Path]) -> None:
    one, _, _ = load_model(one_and_two[1] / "models" / "model.pt")
    two, _, _ = load_model(one_and_two[2] / "models" / "model.pt")
    for (name, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_only_rank_0_writes_and_the_report_counts_the_global_batch(one_and_two: dict[int, Path]) -> None:
    reports = [json.loads((one_and_two[n] / "reports" / "train.json").read_text()) for n in (1, 2)]
    assert (reports[0]["processes"], reports[1]["processes"]) == (1, 2)
    assert reports[0]["tokens_seen"] == reports[1]["tokens_seen"]
    # one model file, one DVCLive folder, no checkpoint left: nothing written twice or left behind
    assert sorted(p.name for p in (one_and_two[2] / "models").iterdir()) == ["model.pt"]


@pytest.mark.slow
def test_two_processes_killed_then_resumed_end_identical_to_an_uninterrupted_pair(
    one_and_two: dict[int, Path], tmp_path: Path
) -> None:
    ws = stage_workspace(tmp_path / "killed", **TWO, checkpoint_interval=10)
    kill_after_checkpoints(ws, writes=1, extra_seconds=0.2, group=True)
    out = finish(ws)
    assert "resuming from models/checkpoint.pt at step" in out
    assert (ws / "models" / "model.pt").read_bytes() == (one_and_two[2] / "models" / "model.pt").read_bytes()
    for name in ("train/loss", "val/loss"):
        assert logged(ws, name) == logged(one_and_two[2], name)


@pytest.mark.slow
def test_workers_die_with_a_sigkilled_torchrun_instead_of_training_on(tmp_path: Path) -> None:
    ws = stage_workspace(tmp_path / "ws", **{**TWO, "max_iters": 100000, "checkpoint_interval": 10})
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.train"],
        cwd=ws,
        env=stage_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (ws / "models" / "checkpoint.pt").exists():  # the workers are training
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len(workers) >= 2
        proc.send_signal(signal.SIGKILL)  # the agent only: it cannot pass anything on
        proc.wait(timeout=30)
        gone, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"orphaned workers still running: {alive}"
    finally:
        for p in psutil.Process().children(recursive=True):
            p.kill()


FAILING_RANK = """
import os
from gptcore.errors import DataError, run_main
from gptcore.data.token_store import TokenStore

if os.environ["RANK"] == "1":
    def broken(self, *args, **kwargs):
        raise DataError("rank 1 could not read its batch")
    TokenStore.random_windows = broken

from stages.train import main
run_main(main)
"""


@pytest.mark.slow
def test_a_failing_rank_fails_the_whole_run_with_its_error_and_never_hangs(tmp_path: Path) -> None:
    ws = stage_workspace(tmp_path / "ws", **TWO)
    (ws / "failing_rank.py").write_text(FAILING_RANK, encoding="utf-8")
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "failing_rank.py",
    ]
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=ws, env=stage_env(), capture_output=True, text=True, timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "error: rank 1 could not read its batch" in out
    assert time.monotonic() - started < 180
    assert not (ws / "models" / "model.pt").exists()


@pytest.mark.slow
def test_the_llama_family_trains_under_two_processes_like_under_one(tmp_path: Path) -> None:
    llama = {**TWO, "arch": "llama", "qk_norm": True, "tie_embeddings": False, "max_iters": 20}
    models = []
    for n in (1, 2):
        ws = stage_workspace(tmp_path / f"n{n}", **{**llama, "nproc_per_node": n})
        finish(ws)
        models.append(load_model(ws / "models" / "model.pt")[0])
    one, two = models
    assert two.config.arch == "llama" and two.config.qk_norm and not two.config.tie_embeddings
    for (name, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


# --- train.*: auto under several processes ------------------------------------------------------

PROBE_UNDER_TORCHRUN = """
import itertools, json, sys

import torch

import gptcore.distributed as distributed
from gptcore.autotune import Choice, TrainingProbe
from gptcore.distributed import Ranks, process_group
from gptcore.model import GPTConfig
from gptcore.params import parse_section
from support_train import train_section

ranks = Ranks.from_env()
params = parse_section("train", train_section(nproc_per_node=2, grad_accum_steps=2, parallel=sys.argv[1]))
config = GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16, bias=False)
seen = {"ddp_forwards": 0, "shards": 0}

class CountingDDP(distributed.DistributedDataParallel):
    def forward(self, *args, **kwargs):
        seen["ddp_forwards"] += 1
        return super().forward(*args, **kwargs)

shard = distributed.shard_model
def counting_shard(*args, **kwargs):
    seen["shards"] += 1
    return shard(*args, **kwargs)

distributed.DistributedDataParallel = CountingDDP
distributed.shard_model = counting_shard
# every clock reading is one tick later: rank 0's ticks are short, so its probe never reaches its
# time bound; rank 1's are long, so alone it would stop timing after two steps while rank 0 waits
# in the all-reduce of a third (binary fractions: the sums are exact)
ticks = itertools.count(0.0, 4.0 if ranks.rank else 0.125)
with process_group(ranks, torch.device("cpu")):
    timing = TrainingProbe(params, config, torch.device("cpu"), 2, ranks, clock=lambda: next(ticks))(
        Choice("float32", False)
    )
result = {"rank": ranks.rank, **seen, "warm": timing.warm_seconds, "step": timing.step_seconds}
with open(f"rank{ranks.rank}.json", "w") as out:
    json.dump(result, out)
"""


def probe_under_torchrun(tmp_path: Path, parallel: str) -> list[dict[str, float]]:
    (tmp_path / "probe.py").write_text(PROBE_UNDER_TORCHRUN, encoding="utf-8")
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    env = {**stage_env(), "PYTHONPATH": f"{stage_env()['PYTHONPATH']}:{Path(__file__).parent}"}
    proc = subprocess.run(
        [*argv, "probe.py", parallel], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [json.loads((tmp_path / f"rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]


@pytest.mark.slow
def test_the_probe_times_the_ddp_step_on_every_rank_and_they_agree_on_the_slowest(tmp_path: Path) -> None:
    from gptcore.autotune import SETTLED_STEPS, WARM_STEPS

    ranks = probe_under_torchrun(tmp_path, "ddp")
    assert [r["rank"] for r in ranks] == [0, 1]
    # every micro-batch of every probed step went through DDP, which all-reduces the gradients;
    # rank 0's clock decided how many steps both timed (its steps all take a tick: settled after
    # SETTLED_STEPS, where rank 1's long ticks alone would have stopped it after two)
    steps = WARM_STEPS + SETTLED_STEPS
    assert [r["ddp_forwards"] for r in ranks] == [2 * steps, 2 * steps]
    assert [r["shards"] for r in ranks] == [0, 0]
    # the clock is read once around the warm-up steps and once around each timed step: one tick;
    # both ranks report rank 1's, the slower
    assert [(r["warm"], r["step"]) for r in ranks] == [(4.0, 4.0)] * 2


@pytest.mark.slow
def test_the_probe_times_the_sharded_step_under_fsdp(tmp_path: Path) -> None:
    ranks = probe_under_torchrun(tmp_path, "fsdp")
    assert [(r["shards"], r["ddp_forwards"]) for r in ranks] == [(1, 0), (1, 0)]
    assert ranks[0]["step"] == ranks[1]["step"] == 4.0


@pytest.mark.slow
def test_auto_under_two_processes_measures_once_together_and_rank_0_caches_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPTCORE_CACHE_DIR", str(tmp_path / "cache"))
    auto = {**TWO, "max_iters": 10, "dtype": "auto", "attention": "auto"}
    sources = []
    for name in ("first", "second"):
        ws = stage_workspace(tmp_path / name, **auto)
        finish(ws)
        report = json.loads((ws / "reports" / "train.json").read_text(encoding="utf-8"))
        assert report["processes"] == 2
        telemetry = json.loads((ws / "reports" / "telemetry" / "train.json").read_text(encoding="utf-8"))
        sources.append(telemetry["precision"]["source"])
    assert sources == ["measured", "cache"]
    cache = json.loads((tmp_path / "cache" / "autotune.json").read_text(encoding="utf-8"))
    keys = [json.loads(k) for k in cache]
    assert [(k["processes"], k["parallel"], k["micro_batch"]) for k in keys] == [(2, "ddp", 8)]
    timed = {(t["dtype"], t["attention"]) for t in next(iter(cache.values())) if t["step_seconds"]}
    assert ("float32", "sdpa") in timed and ("float32", "explicit") in timed
