"""The data stages as users run them (`python -m stages.<name>`): bad input fails cleanly, a fix
re-runs cleanly, and nothing half-written is ever left for DVC to mistake for a good output."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import zstandard
from conftest import workspace

from gptcore.data.split import iter_split_file
from gptcore.data.token_store import TokenStore

REPO = Path(__file__).resolve().parents[1]


# runs a command and writes the peak resident memory of it and every process it waited for, in
# KiB, to the file named first: the test process's own RUSAGE_CHILDREN would count every process an
# earlier test in it started
PEAK = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
    "sys.exit(code)"
)


def run_stage(ws: Path, name: str, peak: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m stages.<name>` in `ws`; with `peak`, the peak resident memory of its processes
    (KiB) is written to that file."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    measure = [] if peak is None else [sys.executable, "-c", PEAK, str(peak)]
    return subprocess.run(
        [*measure, sys.executable, "-m", f"stages.{name}"],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def zstd_stream(data: bytes) -> bytes:
    out = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(out, closefd=False) as writer:
        writer.write(data)
    return out.getvalue()


def pile_shard(first: int, count: int) -> bytes:
    lines = (
        json.dumps(
            {"text": f"document {i}: " + "words and more words. " * 40, "meta": {"pile_set_name": "Pile-CC"}}
        )
        for i in range(first, first + count)
    )
    return zstd_stream("".join(line + "\n" for line in lines).encode())


def test_truncated_shard_fails_naming_it_leaves_no_split_and_a_fixed_corpus_reruns(tmp_path: Path) -> None:
    ws = workspace(tmp_path, include=["**/*.jsonl.zst"])
    (ws / "data/raw/00.jsonl.zst").write_bytes(pile_shard(0, 100))
    good = pile_shard(100, 100)
    (ws / "data/raw/01.jsonl.zst").write_bytes(good[: len(good) // 2])

    failed = run_stage(ws, "extract_split")
    assert failed.returncode == 1
    assert "error:" in failed.stderr and "01.jsonl.zst" in failed.stderr and "truncated" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert not (ws / "data/split").exists() and not (ws / "reports/data.json").exists()
    assert sorted(p.name for p in (ws / "data").iterdir()) == ["raw"]  # no temporary folder left

    (ws / "data/raw/01.jsonl.zst").write_bytes(good)
    assert run_stage(ws, "extract_split").returncode == 0
    report = json.loads((ws / "reports/data.json").read_text(encoding="utf-8"))
    assert report["train"]["documents"] + report["val"]["documents"] == 200


def test_a_failed_rerun_keeps_the_previous_split_intact(tmp_path: Path) -> None:
    ws = workspace(tmp_path, include=["**/*.jsonl.zst"])
    (ws / "data/raw/00.jsonl.zst").write_bytes(pile_shard(0, 50))
    assert run_stage(ws, "extract_split").returncode == 0
    before = {p.name: p.read_bytes() for p in (ws / "data/split").iterdir()}
    (ws / "data/raw/00.jsonl.zst").write_bytes(b'{"text": "fine"}\n{"text": 3}\n')  # not even zstd
    assert run_stage(ws, "extract_split").returncode == 1
    assert {p.name: p.read_bytes() for p in (ws / "data/split").iterdir()} == before


def test_a_bad_json_line_in_a_tar_names_the_archive_member_and_line(tmp_path: Path) -> None:
    import tarfile

    ws = workspace(tmp_path, include=["**/*.jsonl"])
    body = b'{"text": "ok"}\n{"text": "ok"}\n{"txt": "typo"}\n'
    with tarfile.open(ws / "data/raw/bundle.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("shards/a.jsonl")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    failed = run_stage(ws, "extract_split")
    assert failed.returncode == 1
    assert "bundle.tar.gz, member shards/a.jsonl, line 3" in failed.stderr
    assert '"text"' in failed.stderr


@pytest.mark.parametrize("files", [{}, {"notes.pdf": b"%PDF-1.4"}])
def test_an_empty_corpus_or_a_glob_that_matches_nothing_is_a_clear_error(
    tmp_path: Path, files: dict[str, bytes]
) -> None:
    ws = workspace(tmp_path, include=["**/*.txt"])
    for name, data in files.items():
        (ws / "data/raw" / name).write_bytes(data)
    failed = run_stage(ws, "extract_split")
    assert failed.returncode == 1 and not (ws / "data/split").exists()
    if files:
        assert "matches data.include (**/*.txt)" in failed.stderr and "notes.pdf" in failed.stderr
    else:
        assert "holds no files" in failed.stderr


@pytest.mark.slow
def test_a_corrupt_split_file_fails_tokenize_and_leaves_no_tokens(tmp_path: Path) -> None:
    ws = workspace(tmp_path, include=["**/*.jsonl.zst"])
    (ws / "data/raw/00.jsonl.zst").write_bytes(pile_shard(0, 60))
    for stage in ("extract_split", "build_vocab"):
        assert run_stage(ws, stage).returncode == 0
    val = ws / "data/split/val.jsonl.zst"
    good = val.read_bytes()
    val.write_bytes(good[: len(good) - 20])
    failed = run_stage(ws, "tokenize")
    assert failed.returncode == 1 and "val.jsonl.zst" in failed.stderr
    assert not (ws / "data/tokens").exists()
    val.write_bytes(good)
    assert run_stage(ws, "tokenize").returncode == 0
    assert TokenStore(ws / "data/tokens/val.h5").documents == sum(1 for _ in iter_split_file(val))


@pytest.mark.slow
def test_a_200_megabyte_single_line_document_goes_through_every_data_stage(tmp_path: Path) -> None:
    ws = workspace(tmp_path, include=["**/*.txt"])
    line = b"All the world's a stage, and all the men and women merely players. " * 3_000_000
    characters = len(line)  # ASCII: one character per byte
    assert characters > 200_000_000 and b"\n" not in line
    (ws / "data/raw/one-line.txt").write_bytes(line)
    del line
    peaks = {}
    for stage in ("extract_split", "build_vocab", "tokenize"):
        done = run_stage(ws, stage, peak=tmp_path / f"{stage}.peak")
        assert done.returncode == 0, done.stderr
        peaks[stage] = int((tmp_path / f"{stage}.peak").read_text()) / 1024  # MB
    # over data.max_document_bytes (16 MiB), it was read as parts, each cut between two words and
    # followed by an eot; parts that start at the same word of the repeated sentence are the same
    # text, and exact deduplication drops all but the first: the two token files hold every
    # character of the parts kept and one eot per part
    report = json.loads((ws / "reports/data.json").read_text(encoding="utf-8"))
    parts = report["train"]["documents"] + report["val"]["documents"]
    dropped = report["duplicates"]["exact"]
    assert parts + dropped["dropped"] == -(-characters // (16 << 20)) and report["cut_documents"] == {
        "count": 1,
        "names": ["one-line.txt"],
    }
    assert report["val"]["documents"] >= 1
    train, val = TokenStore(ws / "data/tokens/train.h5"), TokenStore(ws / "data/tokens/val.h5")
    assert train.tokens + val.tokens == characters - dropped["bytes"] + parts
    # each stage's biggest process stayed far below the size of the document
    print("peak RSS of each stage's largest process, MB:", {k: round(v) for k, v in peaks.items()})
    assert max(peaks.values()) < 1_000, f"a data stage peaked at {peaks} MB"
    shutil.rmtree(ws / "data")


def test_a_windows_book_with_a_bom_and_a_png_beside_it_give_clean_text_and_a_report(tmp_path: Path) -> None:
    ws = workspace(tmp_path, include=["**/*"])
    chapter = "CHAPTER {i}.\r\n\r\nIt was the best of times, it was the worst of times.\r\n"
    book = "\ufeffA TALE OF TWO CITIES\r\n\r\n" + "".join(chapter.format(i=i) for i in range(200))
    (ws / "data/raw/tale.txt").write_bytes(book.encode("utf-8"))
    (ws / "data/raw/cover.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 40)
    done = run_stage(ws, "extract_split")
    assert done.returncode == 0, done.stderr
    assert "1 binary file skipped (not text): cover.png" in done.stdout
    report = json.loads((ws / "reports/data.json").read_text(encoding="utf-8"))
    assert report["binary_files"] == {"count": 1, "names": ["cover.png"]}
    assert report["bom_dropped_documents"] == 1 and report["line_ends_normalised_documents"] == 1
    text = "".join(
        doc.text
        for split in ("train", "val")
        for doc in iter_split_file(ws / f"data/split/{split}.jsonl.zst")
    )
    assert text == book[1:].replace("\r\n", "\n")
    assert run_stage(ws, "build_vocab").returncode == 0
    chars = json.loads((ws / "data/vocab/tokenizer.json").read_text(encoding="utf-8"))["chars"]
    assert "\r" not in chars and "\ufeff" not in chars and "\x00" not in chars


def test_a_bpe_vocab_size_the_corpus_cannot_reach_is_reported_with_the_size_reached(tmp_path: Path) -> None:
    ws = workspace(tmp_path, include=["**/*.txt"])
    params = yaml.safe_load((ws / "params.yaml").read_text(encoding="utf-8"))
    params["vocab"].update(kind="bpe", vocab_size=70_000)
    (ws / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    (ws / "data/raw/small.txt").write_text("to be or not to be, that is the question\n" * 20)
    assert run_stage(ws, "extract_split").returncode == 0
    done = run_stage(ws, "build_vocab")
    assert done.returncode == 0, done.stderr
    size = json.loads((ws / "data/vocab/tokenizer.json").read_text(encoding="utf-8"))["vocab_size"]
    assert size < 300
    assert (
        f"warning: vocab.vocab_size is 70,000, but the train split holds only enough distinct text for {size} ids"
        in done.stderr
    )
