"""Disk, wall time and peak memory of the data stages on a corpus in FineWeb-Edu's Parquet schema,
with DVC's default cache and with the repository's cache of links; beside them, the disk plan
`gptcore info` prints for the same corpus before anything runs.

A corpus of `--size` bytes of text is generated (benchmarks/parquet_read.py's generator: Zipf
pseudo-words, documents of about 4.5 KB) as `--files` snappy Parquet files under
`<work>/fineweb-edu/sample/10BT/`, as the Hub lays the sample out. For each setting of `--caches`:

  default   a fresh `dvc init` repository: DVC's own cache.type, `reflink,copy`
  links     the same with this checkout's .dvc/config (`hardlink,symlink`)

a git + DVC repository gets this checkout's dvc.yaml, stages/ and gptcore/, and the recipe
(recipes/gpt2-124m-fineweb-edu.yaml) as params.yaml, with `data.source` the corpus and `vocab.file`
a rank file standing in for GPT-2's r50k_base.tiktoken: `--ranks` byte-level BPE ranks learned
from the corpus's first documents, `<|endoftext|>` at 50,256 as in GPT-2's, so the token files are
uint16 as the recipe's; a `sitecustomize` module on the stages' PYTHONPATH swaps the sha256 gptcore
expects of r50k_base's file for this one's (as tests/test_recipe.py does). Then `dvc repro -s` runs
download, extract_split, build_vocab and tokenize one at a time, and after each:

  outputs        the apparent size of the stage's outputs
  data/ so far   disk blocks under data/ not shared with the corpus (a hard link counts once)
  cache so far   disk blocks under .dvc/cache not shared with data/ or the corpus
  total so far   the two: what the pipeline has added to the disk, the corpus aside
  stage s      wall time of the stage's own process (`python -m stages.<name>`), sampled
  dvc s        the rest of `dvc repro -s`: hashing the outputs and storing them in the cache
  stage MB     peak RSS (VmHWM) of the stage's process; dvc MB: of DVC's own process
  load         the 1-minute load average at the stage's start and end (the machine is shared)

MB and GB are 10^6 and 10^9 bytes. The corpus is kept in `--work` for the next run of the same
size and seed unless `--clean`; the repositories are removed after each setting unless `--keep`.

    python benchmarks/disk_plan.py                             # 5 GB of text, both settings (~30 min)
    python benchmarks/disk_plan.py --size 200MB --caches links --clean
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from data_memory import claim_work_folder, parse_size  # benchmarks/ is on sys.path when a script runs
from parquet_read import generate

from gptcore import bpe
from gptcore.data.disk import plan_disk
from gptcore.params import parse_section
from gptcore.tokenizer import BpeTokenizer

REPO = Path(__file__).resolve().parent.parent

RECIPE = REPO / "recipes" / "gpt2-124m-fineweb-edu.yaml"
STAGES = ("download", "extract_split", "build_vocab", "tokenize")
OUTPUTS = {
    "download": ["data/raw"],
    "extract_split": ["data/split"],
    "build_vocab": ["data/vocab"],
    "tokenize": ["data/tokens"],
}
SAMPLE_SECONDS = 0.05
RANK_SAMPLE_DOCUMENTS = 2_000  # documents the stand-in rank file is learned from
# the stand-in rank file passes tiktoken's sha256 check of r50k_base's the way the recipe test's does
sys.path.insert(0, str(REPO / "tests"))
from test_recipe import SITECUSTOMIZE  # noqa: E402

# -- the corpus and the rank file


def ensure_corpus(work: Path, size: int, files: int, seed: int) -> tuple[Path, int]:
    """The corpus folder and its text bytes, generated unless a run with the same settings left it."""
    corpus = work / "fineweb-edu"
    stamp = work / "corpus.json"
    wanted = {"size": size, "files": files, "seed": seed}
    if stamp.is_file() and corpus.is_dir():
        made = json.loads(stamp.read_text())
        if {k: made[k] for k in wanted} == wanted:
            return corpus, made["text_bytes"]
    shutil.rmtree(corpus, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    start = time.perf_counter()
    text_bytes = generate(corpus / "sample" / "10BT", size, files, 1000, seed)
    print(f"generated {text_bytes / 1e9:.2f} GB of text in {time.perf_counter() - start:.0f} s", flush=True)
    stamp.write_text(json.dumps({**wanted, "text_bytes": text_bytes}))
    return corpus, text_bytes


def write_ranks(work: Path, corpus: Path, ranks: int) -> tuple[Path, Path]:
    """A stand-in for r50k_base.tiktoken learned from the corpus, and the folder of the module
    that makes tiktoken accept it as r50k_base's; returns (rank file, hooks folder)."""
    first = sorted(corpus.rglob("*.parquet"))[0]
    texts = pq.ParquetFile(first).read_row_group(0, columns=["text"]).column("text").to_pylist()
    while len(texts) < RANK_SAMPLE_DOCUMENTS:
        texts += texts
    path = work / "r50k_base.tiktoken"
    bpe.write_ranks(path, BpeTokenizer.train(iter(texts[:RANK_SAMPLE_DOCUMENTS]), ranks).ranks)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    hooks = work / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE.format(sha256=sha256))
    return path, hooks


# -- a repository


def make_repo(path: Path, corpus: Path, ranks: Path, links: bool, env: dict[str, str]) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    for name in ("dvc.yaml", "stages", "gptcore", ".gitignore", ".dvcignore"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, path / name)
    params = yaml.safe_load(RECIPE.read_text())
    params["data"]["source"] = str(corpus)
    params["vocab"]["file"] = str(ranks)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@gptcore.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=path, check=True, env=env)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=path, check=True, env=env)
    if links:
        shutil.copy2(REPO / ".dvc" / "config", path / ".dvc" / "config")
    subprocess.run(["git", "add", "-A"], cwd=path, check=True, env=env)
    subprocess.run([*git, "commit", "-qm", "pipeline"], cwd=path, check=True, env=env)


def plan_rows(path: Path) -> list[tuple[str, str]]:
    sections = yaml.safe_load((path / "params.yaml").read_text())
    plan = plan_disk(parse_section("data", sections["data"]), parse_section("vocab", sections["vocab"]), path)
    return plan.rows()


# -- measuring


def blocks(roots: list[Path]) -> int:
    """Bytes of disk blocks of the files under `roots`, each file (inode) once; .git left out."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d != ".git"]
            for name in files:
                st = os.lstat(os.path.join(folder, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def apparent(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        total += sum(p.stat().st_size for p in files)
    return total


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    out[line[:5]] = int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as fh:
                    stat = fh.read()
            except (FileNotFoundError, ProcessLookupError):
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(entry.name))
    return children


class StageSampler(threading.Thread):
    """Samples `dvc repro`'s process tree: DVC's own peak, the stage process's peak, and the
    stretch of time the stage process was seen."""

    def __init__(self, pid: int, stage: str) -> None:
        super().__init__(daemon=True)
        self.pid, self.needle = pid, f"stages.{stage}".encode()
        self.dvc_peak = self.stage_peak = 0
        self.first: float | None = None
        self.last: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.perf_counter()
            self.dvc_peak = max(self.dvc_peak, _status(self.pid).get("VmHWM", 0))
            tree, todo = [], [self.pid]
            children = _children()
            while todo:
                pid = todo.pop()
                tree.append(pid)
                todo += children.get(pid, [])
            for pid in tree[1:]:
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if self.needle in cmdline and b"python" in cmdline:
                    peak = _status(pid).get("VmHWM", 0)
                    if peak:
                        self.stage_peak = max(self.stage_peak, peak)
                        self.first = now if self.first is None else self.first
                        self.last = now
            self.stop.wait(SAMPLE_SECONDS)


@dataclass
class StageRun:
    stage: str
    wall: float
    stage_wall: float
    stage_peak: int
    dvc_peak: int
    outputs: int
    data_adds: int  # every stage so far
    cache_adds: int  # every stage so far
    load: tuple[float, float]


def run_stage(path: Path, corpus: Path, stage: str, env: dict[str, str]) -> StageRun:
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    log = path.parent / f"{path.name}-{stage}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro", "-s", stage],
            cwd=path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        sampler = StageSampler(proc.pid, stage)
        sampler.start()
        proc.wait()
        wall = time.perf_counter() - start
        sampler.stop.set()
        sampler.join()
    if proc.returncode != 0:
        sys.exit(f"dvc repro -s {stage} failed in {path}; the end of its log:\n{log.read_text()[-3000:]}")
    stage_wall = (sampler.last - sampler.first + SAMPLE_SECONDS) if sampler.first and sampler.last else 0.0
    with_data = blocks([corpus, path / "data"])
    return StageRun(
        stage,
        wall,
        stage_wall,
        sampler.stage_peak,
        sampler.dvc_peak,
        apparent([path / p for p in OUTPUTS[stage]]),
        with_data - blocks([corpus]),
        blocks([corpus, path / "data", path / ".dvc" / "cache"]) - with_data,
        (load_before, os.getloadavg()[0]),
    )


def table(setting: str, runs: list[StageRun]) -> None:
    print(
        f"\n| cache ({setting}) | stage | outputs | data/ so far | cache so far | total so far | stage s "
        "| dvc s | stage MB | dvc MB | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        print(
            f"| {setting} | {run.stage} | {gb(run.outputs)} | {gb(run.data_adds)} | {gb(run.cache_adds)} | "
            f"{gb(run.data_adds + run.cache_adds)} | {run.stage_wall:.1f} | {run.wall - run.stage_wall:.1f} | "
            f"{run.stage_peak / 1e6:.0f} | {run.dvc_peak / 1e6:.0f} | {run.load[0]:.1f}-{run.load[1]:.1f} |"
        )


def gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("5GB"), help="bytes of text (default 5GB)")
    ap.add_argument("--files", type=int, default=20, help="Parquet files (default 20)")
    ap.add_argument("--ranks", type=int, default=4096, help="ranks of the stand-in rank file (default 4096)")
    ap.add_argument("--caches", default="links,default", help="settings, in order: links, default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/gptcore-disk-plan"))
    ap.add_argument("--keep", action="store_true", help="keep each setting's repository")
    ap.add_argument("--clean", action="store_true", help="delete the generated corpus at the end")
    args = ap.parse_args()
    claim_work_folder(args.work, ap)
    work = args.work.expanduser().resolve()
    corpus, text_bytes = ensure_corpus(work, args.size, args.files, args.seed)
    parquet = sum(p.stat().st_size for p in corpus.rglob("*.parquet"))
    print(
        f"corpus: {text_bytes:,} bytes of text in {parquet:,} bytes of Parquet ({parquet / text_bytes:.3f} a text byte)"
    )
    ranks, hooks = write_ranks(work, corpus, args.ranks)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(hooks),
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(work / "dvc-site"),
        "TQDM_DISABLE": "1",
    }
    results = {}
    try:
        for setting in args.caches.split(","):
            path = work / f"repo-{setting}"
            make_repo(path, corpus, ranks, setting == "links", env)
            print(f"\n== {setting}: the plan, before anything runs")
            for label, value in plan_rows(path):
                print(f"   {label:<30} {value}")
            runs = []
            for stage in STAGES:
                runs.append(run_stage(path, corpus, stage, env))
                r = runs[-1]
                print(
                    f"   {stage}: {r.wall:.0f} s, outputs {gb(r.outputs)}, data/ adds {gb(r.data_adds)}, "
                    f"cache adds {gb(r.cache_adds)}",
                    flush=True,
                )
            reports = {
                name: json.loads((path / "reports" / f"{name}.json").read_text())
                for name in ("data", "tokens")
            }
            results[setting] = runs
            table(setting, runs)
            data, tokens = reports["data"], reports["tokens"]
            text = data["train"]["bytes"] + data["val"]["bytes"]
            count = tokens["train"]["tokens"] + tokens["val"]["tokens"]
            split = apparent([path / "data" / "split"])
            h5 = apparent([path / "data" / "tokens"])
            print(
                f"\n{setting}: {text:,} bytes of text kept ({data['train']['documents'] + data['val']['documents']:,} "
                f"documents); split {split:,} bytes ({split / text:.4f} a text byte); {count:,} tokens "
                f"({text / count:.3f} bytes a token); token files {h5:,} bytes ({h5 / count:.4f} a token)"
            )
            if not args.keep:
                shutil.rmtree(path)
    finally:
        if args.clean:
            shutil.rmtree(corpus, ignore_errors=True)
            (work / "corpus.json").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
