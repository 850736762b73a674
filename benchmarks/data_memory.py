"""Peak memory and throughput of the data stages (extract_split, build_vocab, tokenize) on big and hostile corpora.

Target: peak RSS under 1 GB for every data stage, on a 2 GB corpus and on single documents of 1 GiB,
the whole process tree counted (tokenize spawns one encoding worker per core).

A corpus of `--size` bytes of UTF-8 text is generated, deterministically from `--seed`, in two layouts:

  owt   openwebtext.tar.xz > openwebtext/urlsf_subset00-K_data.xz (an xz-compressed GNU tar, ~80 MB of
        text each) > NNNNNNN-<md5>.txt pages of 1-20 KB (lognormal), as OpenWebText ships
  pile  NN.jsonl.zst shards (~500 MB of text each), each one zstd frame without a content size,
        one {"text": ..., "meta": {"pile_set_name": ...}} per line, nine sets with their own
        document lengths (Books3-like documents of ~300 KB among them), as the Pile ships

and three hostile layouts of `--hostile-size` bytes (default 1 GiB), each a single document beside a
one-line `small.txt`, read with `data.include: ["**/*"]` and the default (bpe) vocabulary:

  nul      nul.gz: NUL bytes, about 1 MB compressed
  letter   letter.gz: the letter `a` repeated, about 1 MB compressed
  nospace  nospace.txt.zst: the pseudo-words below run together, no whitespace or punctuation

The text is Zipf-distributed pseudo-words (a few with accents, emoji and CJK, so UTF-8 bytes exceed
characters) with punctuation and line breaks; xz preset 0 and zstd level 3 keep generation of 2 GB
at ~7 min (owt) and ~1 min (pile) on 2 cores. A generated corpus is cached in `--work` and reused
for the same size and seed.

Each layout gets a workspace `--work/ws-<layout>/` with `data/raw/` (hard links to the corpus) and a
copy of the repo's params.yaml whose `data.include` selects the documents (`vocab.kind: char`). Each
stage runs as `python -m stages.<name>` there, as DVC would run it, while a thread samples /proc
every 50 ms. Columns:

  main MB    the stage process's VmHWM (the kernel's high-water mark of its RSS)
  tree MB    peak over samples of the summed VmRSS of the process and all its descendants (the
             target's figure; a shared page, a library's above all, counts in every process mapping it)
  tree PSS   the same sum of PSS (shared pages divided among their sharers): what the tree costs
  worker MB  the largest VmHWM of any descendant (tokenize's encoding workers)
  MB/s       UTF-8 text bytes the stage reads (train + val; train alone for build_vocab) per wall second

MB are 10^6 bytes, for RSS as for text. On a shared machine wall times are noisy; peaks are not.

    python benchmarks/data_memory.py                          # 2 GB, both layouts (~15 min; ~8 once cached)
    python benchmarks/data_memory.py --size 200MB --layouts pile
    python benchmarks/data_memory.py --workers 2 --keep       # keep the workspaces' outputs
    python benchmarks/data_memory.py --layouts nul,letter,nospace   # the hostile documents
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
import zstandard

REPO = Path(__file__).resolve().parent.parent
GENERATOR_VERSION = 1  # bump when the generated corpus changes, to invalidate caches
STAGES = ("extract_split", "build_vocab", "tokenize")
TARGET_RSS_MB = 1000.0
SAMPLE_SECONDS = 0.05

N_WORDS = 4000
WORD_LOOKUP = 1 << 20  # quantised Zipf sampling: a table of word ids drawn by uniform index
SEPARATORS = {" ": 80, ", ": 7, ". ": 6, ".\n": 3, ".\n\n": 1.5, " — ": 1, "? ": 0.5, "! ": 0.5, "; ": 0.5}
ACCENTED = "éèàüöñçßøå"
SYMBOLS = ["🙂", "🚀", "€", "日本", "naïve", "Æther", "µs", "≈", "café", "—"]
CHUNK_PAIRS = 1 << 20  # word + separator pairs generated per numpy step (~6 MB of text)
PAIR_WIDTH = 16  # bytes per (word, separator) row: words of up to 10 letters fit with any separator

XZ_PRESET = 0
OWT_SUBSET_BYTES = 80_000_000
OWT_PAGE = (8.3, 0.6, 1_000, 20_000)  # lognormal log-median (~4 KB), sigma, min, max bytes
PILE_SHARD_BYTES = 500_000_000
PILE_SETS = {  # name: (share of documents, median bytes)
    "Pile-CC": (0.40, 4_000),
    "OpenWebText2": (0.15, 4_000),
    "PubMed Central": (0.08, 30_000),
    "Github": (0.10, 3_000),
    "StackExchange": (0.10, 2_000),
    "Wikipedia (en)": (0.08, 3_000),
    "FreeLaw": (0.04, 10_000),
    "ArXiv": (0.04, 40_000),
    "Books3": (0.01, 300_000),
}
PILE_SIGMA, PILE_MIN, PILE_MAX = 0.8, 200, 4_000_000


# -- text


class Babbler:
    """Pseudo-text from a seeded generator: Zipf-distributed pseudo-words joined by punctuation.

    Every (word, separator) pair is a 16-byte row padded with NUL bytes, viewed as one complex128,
    so a chunk of text is one `np.take` of pair ids and one mask that drops the padding.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        letters = "abcdefghijklmnopqrstuvwxyz"
        lengths = np.sort(np.clip(rng.poisson(4.0, N_WORDS) + 2, 2, 10))  # frequent words are short
        words = []
        for n in lengths:
            chars = [letters[i] for i in rng.integers(0, 26, n)]
            if rng.random() < 0.05:
                chars[rng.integers(0, n)] = ACCENTED[rng.integers(0, len(ACCENTED))]
            words.append("".join(chars))
        for i, symbol in zip(
            rng.choice(np.arange(50, N_WORDS), len(SYMBOLS), replace=False), SYMBOLS, strict=True
        ):
            words[i] = symbol
        pairs = [(w + s).encode() for w in words for s in SEPARATORS]
        rows = np.zeros((len(pairs), PAIR_WIDTH), dtype=np.uint8)
        for i, pair in enumerate(pairs):
            rows[i, : len(pair)] = np.frombuffer(pair, dtype=np.uint8)
        self.rows = rows.view(np.complex128).ravel()  # one 16-byte item per pair, for a fast np.take
        self.lengths = np.array([len(p) for p in pairs], dtype=np.int64)
        zipf = 1.0 / (np.arange(N_WORDS) + 2.7)
        self.word_lookup = _quantile_table(zipf, WORD_LOOKUP) * len(SEPARATORS)
        self.sep_lookup = _quantile_table(np.array(list(SEPARATORS.values())), 1 << 12)
        self.text = b""
        self.ends = np.zeros(0, dtype=np.int64)  # offsets in self.text where a word + separator ends
        self.pos = 0

    def _extend(self) -> None:
        ids = self.word_lookup[self.rng.integers(0, WORD_LOOKUP, CHUNK_PAIRS)]
        ids += self.sep_lookup[self.rng.integers(0, len(self.sep_lookup), CHUNK_PAIRS)]
        raw = np.take(self.rows, ids).view(np.uint8)
        chunk = raw[raw != 0].tobytes()
        keep = self.ends[self.ends > self.pos] - self.pos
        rest = self.text[self.pos :]
        self.ends = np.concatenate([keep, len(rest) + np.cumsum(self.lengths[ids])])
        self.text = rest + chunk
        self.pos = 0

    def take(self, size: int) -> bytes:
        """The next stretch of text: at least `size` bytes, ending after a separator."""
        while not len(self.ends) or self.ends[-1] < self.pos + size:
            self._extend()
        end = int(self.ends[np.searchsorted(self.ends, self.pos + size)])
        out = self.text[self.pos : end]
        self.pos = end
        return out


def _quantile_table(weights: np.ndarray, n: int) -> np.ndarray:
    """`n` ids whose uniform draw follows `weights` (to 1/n resolution): sampling is one gather."""
    cdf = np.cumsum(weights) / np.sum(weights)
    return np.searchsorted(cdf, (np.arange(n) + 0.5) / n).astype(np.int64)


def _lognormal(rng: np.random.Generator, log_median: float, sigma: float, lo: int, hi: int) -> int:
    return int(np.clip(rng.lognormal(log_median, sigma), lo, hi))


# -- corpora


@dataclass
class Corpus:
    layout: str
    folder: Path
    documents: int = 0
    bytes: int = 0
    characters: int = 0
    files: dict[str, int] = field(default_factory=dict)
    generate_s: float = 0.0

    def add(self, text: bytes) -> None:
        self.documents += 1
        self.bytes += len(text)
        self.characters += len(text.decode())


def _reset_owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 1_556_668_800
    info.mode = 0o644
    return info


def generate_owt(corpus: Corpus, size: int, seed: int) -> None:
    rng = np.random.default_rng([seed, 1])
    babbler = Babbler(np.random.default_rng([seed, 0]))
    subsets = max(2, math.ceil(size / OWT_SUBSET_BYTES))
    outer_path = corpus.folder / "openwebtext.tar.xz"
    with tarfile.open(outer_path, "w:xz", preset=XZ_PRESET, format=tarfile.GNU_FORMAT) as outer:
        for k in range(subsets):
            inner_path = corpus.folder / f".subset{k}.tar.xz.tmp"
            goal = size * (k + 1) // subsets
            with tarfile.open(inner_path, "w:xz", preset=XZ_PRESET, format=tarfile.GNU_FORMAT) as inner:
                while corpus.bytes < goal:
                    page = babbler.take(_lognormal(rng, *OWT_PAGE))
                    info = _reset_owner(
                        tarfile.TarInfo(f"{corpus.documents:07d}-{hashlib.md5(page).hexdigest()}.txt")
                    )
                    info.size = len(page)
                    inner.addfile(info, io.BytesIO(page))
                    corpus.add(page)
            outer.add(inner_path, arcname=f"openwebtext/urlsf_subset00-{k + 1}_data.xz", filter=_reset_owner)
            inner_path.unlink()
    corpus.files[outer_path.name] = outer_path.stat().st_size


def generate_pile(corpus: Corpus, size: int, seed: int) -> None:
    rng = np.random.default_rng([seed, 1])
    babbler = Babbler(np.random.default_rng([seed, 0]))
    names = list(PILE_SETS)
    shares = np.array([share for share, _ in PILE_SETS.values()])
    shards = max(2, math.ceil(size / PILE_SHARD_BYTES))
    for k in range(shards):
        path = corpus.folder / f"{k:02d}.jsonl.zst"
        goal = size * (k + 1) // shards
        # stream_writer with no size given: one frame whose header has no content size, as the Pile's
        with open(path, "wb") as fh, zstandard.ZstdCompressor(level=3).stream_writer(fh) as out:
            while corpus.bytes < goal:
                name = names[rng.choice(len(names), p=shares / shares.sum())]
                median = PILE_SETS[name][1]
                text = babbler.take(_lognormal(rng, math.log(median), PILE_SIGMA, PILE_MIN, PILE_MAX))
                line = json.dumps({"text": text.decode(), "meta": {"pile_set_name": name}})
                out.write(line.encode() + b"\n")
                corpus.add(text)
        corpus.files[path.name] = path.stat().st_size


def _one_document(
    corpus: Corpus, name: str, size: int, chunks: typing.Iterator[bytes], opener: typing.Any
) -> None:
    """Write one document of `size` bytes from `chunks` through `opener` (gzip or zstd), and a small text."""
    path = corpus.folder / name
    written = 0
    with opener(path) as out:
        for chunk in chunks:
            chunk = chunk[: size - written]
            out.write(chunk)
            written += len(chunk)
            if written >= size:
                break
    small = b"A line of ordinary text, so that the corpus is not empty.\n"
    (corpus.folder / "small.txt").write_bytes(small)
    corpus.documents, corpus.bytes, corpus.characters = 2, size + len(small), size + len(small)
    corpus.files = {p.name: p.stat().st_size for p in (path, corpus.folder / "small.txt")}


def _repeated(byte: bytes) -> typing.Iterator[bytes]:
    chunk = byte * (1 << 20)
    while True:
        yield chunk


def _gzip(path: Path) -> typing.Any:
    return gzip.open(path, "wb", compresslevel=9)


def _zstd(path: Path) -> typing.Any:
    return zstandard.ZstdCompressor(level=3).stream_writer(open(path, "wb"))


def generate_nul(corpus: Corpus, size: int, seed: int) -> None:
    _one_document(corpus, "nul.gz", size, _repeated(b"\0"), _gzip)


def generate_letter(corpus: Corpus, size: int, seed: int) -> None:
    _one_document(corpus, "letter.gz", size, _repeated(b"a"), _gzip)


def generate_nospace(corpus: Corpus, size: int, seed: int) -> None:
    babbler = Babbler(np.random.default_rng([seed, 0]))

    def words() -> typing.Iterator[bytes]:
        while True:  # the babble with every separator dropped: one run of letters (and a few symbols)
            yield re.sub(rb"(?:[\s,.;?!]|\xe2\x80\x94)+", b"", babbler.take(CHUNK_PAIRS))

    _one_document(corpus, "nospace.txt.zst", size, words(), _zstd)


# layout: (generator, data.include, vocab.kind or None for params.yaml's, hostile: sized by --hostile-size)
GENERATORS = {
    "owt": (generate_owt, ["**/*.txt"], "char", False),
    "pile": (generate_pile, ["**/*.jsonl.zst"], "char", False),
    "nul": (generate_nul, ["**/*"], None, True),
    "letter": (generate_letter, ["**/*"], None, True),
    "nospace": (generate_nospace, ["**/*"], None, True),
}


def ensure_corpus(work: Path, layout: str, size: int, seed: int) -> Corpus:
    """The cached corpus for (layout, size, seed), generated first if absent or incomplete."""
    key = {"version": GENERATOR_VERSION, "layout": layout, "size": size, "seed": seed}
    folder = work / "corpus" / f"{layout}-{size}-seed{seed}"
    marker = folder.with_suffix(".json")
    if marker.exists():
        saved = json.loads(marker.read_text())
        if {k: saved.get(k) for k in key} == key:
            corpus = Corpus(
                layout, folder, **{k: saved[k] for k in ("documents", "bytes", "characters", "files")}
            )
            corpus.generate_s = saved["generate_s"]
            print(f"{layout}: reusing the corpus in {folder} (generated in {corpus.generate_s:.0f} s)")
            return corpus
        marker.unlink()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    corpus = Corpus(layout, folder)
    print(f"{layout}: generating {size / 1e6:,.0f} MB of text into {folder} ...", flush=True)
    start = time.perf_counter()
    GENERATORS[layout][0](corpus, size, seed)
    corpus.generate_s = time.perf_counter() - start
    print(f"{layout}: generated in {corpus.generate_s:.1f} s ({size / 1e6 / corpus.generate_s:.1f} MB/s)")
    saved = {
        **key,
        **{k: getattr(corpus, k) for k in ("documents", "bytes", "characters", "files", "generate_s")},
    }
    marker.write_text(json.dumps(saved, indent=2) + "\n")
    return corpus


# -- measuring a stage


def _proc_memory(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (from status) and Pss (from smaps_rollup) of a process in kB; empty once it is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line[:5]] = int(line.split()[1])
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    out["Pss"] = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


def _descendants(root: int) -> list[int]:
    """`root` and every process below it, from the parent ids in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                stat = fh.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


class RssSampler(threading.Thread):
    """Samples the memory of a process tree until stopped.

    main: the root's VmHWM; tree: the peak over samples of the summed VmRSS of the root and its
    descendants (shared pages, such as libraries, counted once per process); tree PSS: the same sum
    with shared pages divided among their sharers; worker: the largest VmHWM of any descendant.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.main_kb = self.tree_kb = self.tree_pss_kb = self.worker_kb = 0
        self.max_processes = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            tree = _descendants(self.pid)
            mem = [_proc_memory(pid) for pid in tree]
            self.main_kb = max(self.main_kb, mem[0].get("VmHWM", 0))
            self.worker_kb = max([self.worker_kb, *(m.get("VmHWM", 0) for m in mem[1:])])
            self.tree_kb = max(self.tree_kb, sum(m.get("VmRSS", 0) for m in mem))
            self.tree_pss_kb = max(self.tree_pss_kb, sum(m.get("Pss", 0) for m in mem))
            self.max_processes = max(self.max_processes, sum(1 for m in mem if m))
            self.stop.wait(SAMPLE_SECONDS)


@dataclass
class StageRun:
    name: str
    returncode: int
    wall_s: float
    main_mb: float
    tree_mb: float
    tree_pss_mb: float
    worker_mb: float
    processes: int
    stdout: str
    stderr: str


def run_stage(workspace: Path, name: str) -> StageRun:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    logs = workspace / "logs"
    logs.mkdir(exist_ok=True)
    out_path, err_path = logs / f"{name}.out", logs / f"{name}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", f"stages.{name}"], cwd=workspace, env=env, stdout=out, stderr=err
        )
        sampler = RssSampler(proc.pid)
        sampler.start()
        proc.wait()
        wall = time.perf_counter() - start
        sampler.stop.set()
        sampler.join()
    return StageRun(
        name,
        proc.returncode,
        wall,
        sampler.main_kb * 1024 / 1e6,
        sampler.tree_kb * 1024 / 1e6,
        sampler.tree_pss_kb * 1024 / 1e6,
        sampler.worker_kb * 1024 / 1e6,
        sampler.max_processes,
        out_path.read_text(errors="replace"),
        err_path.read_text(errors="replace"),
    )


# -- one layout


def make_workspace(work: Path, corpus: Corpus, workers: int | None) -> Path:
    workspace = work / f"ws-{corpus.layout}"
    shutil.rmtree(workspace, ignore_errors=True)
    raw = workspace / "data" / "raw"
    raw.mkdir(parents=True)
    for name in corpus.files:
        os.link(corpus.folder / name, raw / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    _, include, kind, _ = GENERATORS[corpus.layout]
    params["data"].update(source=str(corpus.folder), include=include)
    if kind is not None:
        params["vocab"]["kind"] = kind
    if workers is not None:
        params["tokenize"]["workers"] = workers
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    return workspace


def _folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def bench_layout(work: Path, corpus: Corpus, workers: int | None, keep: bool) -> None:
    on_disk = sum(corpus.files.values())
    print(
        f"\n== {corpus.layout}: {corpus.documents:,} documents, {corpus.bytes / 1e6:,.1f} MB of text "
        f"({corpus.characters:,} characters), {on_disk / 1e6:,.1f} MB on disk in {len(corpus.files)} file(s) "
        f"({on_disk / corpus.bytes:.1%})"
    )
    workspace = make_workspace(work, corpus, workers)
    runs: list[StageRun] = []
    text_bytes = train_bytes = 0
    for name in STAGES:
        print(f"-- {name}", flush=True)
        run = run_stage(workspace, name)
        runs.append(run)
        for line in run.stdout.splitlines():
            print(f"   {line}")
        if run.returncode != 0:
            print(f"   FAILED with exit code {run.returncode}; the end of its stderr:")
            for line in run.stderr.splitlines()[-20:]:
                print(f"   | {line}")
            break
        if name == "extract_split":
            report = json.loads((workspace / "reports" / "data.json").read_text())
            train_bytes = report["train"]["bytes"]
            text_bytes = train_bytes + report["val"]["bytes"]
            if text_bytes != corpus.bytes:
                print(f"   NOTE: the splits hold {text_bytes:,} bytes of text, the corpus {corpus.bytes:,}")
    tokens = 0
    tokens_report = workspace / "reports" / "tokens.json"
    if tokens_report.exists():
        report = json.loads(tokens_report.read_text())
        tokens = report["train"]["tokens"] + report["val"]["tokens"]

    header = ["wall s", "MB/s", "main MB", "tree MB", "tree PSS", "worker MB", "procs", "tokens/s"]
    print(f"\n{corpus.layout}: {'stage':14s} " + " ".join(f"{h:>9s}" for h in header))
    for run in runs:
        read = train_bytes if run.name == "build_vocab" else text_bytes
        rate = f"{read / 1e6 / run.wall_s:9.1f}" if run.returncode == 0 and read else f"{'-':>9s}"
        tok = f"{tokens / run.wall_s:9,.0f}" if run.name == "tokenize" and tokens else ""
        worker = f"{run.worker_mb:9.0f}" if run.processes > 1 else f"{'-':>9s}"
        flag = "" if run.returncode == 0 else "  FAILED"
        print(
            f"{'':{len(corpus.layout) + 2}s}{run.name:14s} {run.wall_s:9.1f} {rate} {run.main_mb:9.0f} "
            f"{run.tree_mb:9.0f} {run.tree_pss_mb:9.0f} {worker} {run.processes:9d} {tok}{flag}"
        )
    for run in runs:
        verdict = "met" if run.returncode == 0 and run.tree_mb < TARGET_RSS_MB else "NOT MET"
        print(
            f"  target: {run.name} peak RSS of the tree < {TARGET_RSS_MB:,.0f} MB: {verdict} "
            f"({run.tree_mb:,.0f} MB; {run.processes} processes; PSS {run.tree_pss_mb:,.0f} MB)"
        )
    data_report = workspace / "reports" / "data.json"
    if data_report.exists():
        report = json.loads(data_report.read_text())
        for key in ("binary_files", "cut_documents", "too_long_lines"):
            if report.get(key, {}).get("count"):
                print(f"  reports/data.json {key}: {report[key]}")
    for sub in ("data/split", "data/tokens"):
        if (workspace / sub).exists():
            print(f"  {sub}: {_folder_mb(workspace / sub):,.1f} MB")
    if keep:
        print(f"  workspace kept: {workspace}")
    else:
        shutil.rmtree(workspace)


WORK_MARKER = ".gptcore-data-bench"  # the folder is this benchmark's: its subfolders may be replaced


def claim_work_folder(work: Path, ap: argparse.ArgumentParser) -> None:
    """Make `work` this benchmark's, or stop: it replaces corpora and workspaces inside it, so a
    folder holding anything else (a user's `--work ~`) is refused, never cleared."""
    work = work.expanduser()
    if work.exists() and not work.is_dir():
        ap.error(f"--work {work} is not a folder")
    if work.is_dir() and any(work.iterdir()) and not (work / WORK_MARKER).is_file():
        ap.error(f"--work {work} holds files this benchmark did not write: name a new or empty folder")
    work.mkdir(parents=True, exist_ok=True)
    (work / WORK_MARKER).write_text("generated inputs and workspaces of the benchmarks/ scripts\n")


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 200MB, 2GB, 1.5GiB)")
    unit = (m.group(2) or "b").lower().rstrip("b") or "b"
    scale = {
        "b": 1,
        "k": 1e3,
        "m": 1e6,
        "g": 1e9,
        "t": 1e12,
        "ki": 2**10,
        "mi": 2**20,
        "gi": 2**30,
        "ti": 2**40,
    }
    return int(float(m.group(1)) * scale[unit])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--size", type=parse_size, default="2GB", help="UTF-8 bytes of text per layout (2GB, 200MB, ...)"
    )
    ap.add_argument("--layouts", default="owt,pile", help="comma-separated: owt, pile, nul, letter, nospace")
    ap.add_argument(
        "--hostile-size", type=parse_size, default="1GiB", help="bytes of the single hostile document"
    )
    ap.add_argument("--seed", type=int, default=0, help="seeds the generated text")
    ap.add_argument(
        "--workers", type=int, default=None, help="tokenize.workers (default: params.yaml's, 0 = all cores)"
    )
    ap.add_argument(
        "--work", type=Path, default=Path("/tmp/gptcore-data-bench"), help="corpus cache and workspaces"
    )
    ap.add_argument("--keep", action="store_true", help="keep each workspace's stage outputs")
    args = ap.parse_args()
    layouts = [name.strip() for name in args.layouts.split(",") if name.strip()]
    unknown = [name for name in layouts if name not in GENERATORS]
    if unknown:
        ap.error(f"unknown layout {unknown[0]!r} (known: {', '.join(GENERATORS)})")
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, corpus {args.size / 1e6:,.0f} MB, seed {args.seed}"
    )
    claim_work_folder(args.work, ap)
    for layout in layouts:
        size = args.hostile_size if GENERATORS[layout][3] else args.size
        corpus = ensure_corpus(args.work, layout, size, args.seed)
        bench_layout(args.work, corpus, args.workers, args.keep)


if __name__ == "__main__":
    main()
