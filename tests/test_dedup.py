"""Specification of gptcore.data.dedup: exact and near duplicates dropped before the split, counted
and named, so that no text lands in both train and val."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, workspace

from gptcore.data import dedup
from gptcore.data.dedup import DedupStats, HashSet, NearDuplicates, drop_duplicates
from gptcore.data.split import Document, iter_split_file
from gptcore.params import DedupParams, ParamsError, load_section

EXACT = DedupParams(exact=True, near=False, threshold=0.8, num_perm=128, shingle_words=5)
BOTH = DedupParams(exact=True, near=True, threshold=0.8, num_perm=128, shingle_words=5)
OFF = DedupParams(exact=False, near=False, threshold=0.8, num_perm=128, shingle_words=5)
VOCABULARY = [f"w{i}" for i in range(20_000)]  # unrelated documents share almost no 5-word shingle


def words(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(VOCABULARY) for _ in range(n)]


def changed(text: str, rng: random.Random, n: int) -> str:
    """`text` with `n` of its words replaced: one word changes at most 5 of its 5-word shingles."""
    out = text.split(" ")
    for i in rng.sample(range(len(out)), n):
        out[i] = "novel"
    return " ".join(out)


def shingles(text: str, k: int = 5) -> set[tuple[str, ...]]:
    w = text.lower().split()
    return {tuple(w[i : i + k]) for i in range(len(w) - k + 1)} if len(w) >= k else {tuple(w)}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def kept(documents: list[Document], params: DedupParams) -> tuple[list[str], DedupStats]:
    stats = DedupStats()
    return [doc.name for doc in drop_duplicates(documents, params, stats)], stats


# --- exact duplicates ---------------------------------------------------------------------------


def test_exact_duplicates_differ_only_in_whitespace_and_the_first_copy_stays() -> None:
    docs = [
        Document("a", "To be, or not to be:\nthat is the question."),
        Document("b", "Something else entirely."),
        Document("a-copy", "  To be,  or not to be:\r\n\tthat is the question.\n\n"),
        Document("a-upper", "TO BE, or not to be: that is the question."),  # case is text: kept
        Document("b-copy", "Something else entirely."),
    ]
    names, stats = kept(docs, EXACT)
    assert names == ["a", "b", "a-upper"]
    assert (stats.exact, stats.exact_names) == (2, ["a-copy", "b-copy"])
    assert stats.exact_bytes == len(docs[2].text.encode()) + len(docs[4].text.encode())
    assert stats.report(EXACT) == {
        "exact": {"dropped": 2, "bytes": stats.exact_bytes, "names": ["a-copy", "b-copy"]},
        "near": None,
    }


def test_dedup_off_passes_every_document_through() -> None:
    docs = [Document(str(i), "the same text") for i in range(3)]
    names, stats = kept(docs, OFF)
    assert names == ["0", "1", "2"] and stats == DedupStats()
    assert stats.report(OFF) == {"exact": None, "near": None}


def test_only_the_first_hundred_exact_duplicates_are_named_but_all_are_counted() -> None:
    docs = [Document(f"copy{i}", "again") for i in range(250)]
    names, stats = kept(docs, EXACT)
    assert names == ["copy0"]
    assert stats.exact == 249 and stats.exact_names == [f"copy{i}" for i in range(1, 101)]


def test_hash_set_holds_what_was_added_through_its_growth() -> None:
    rng = random.Random(0)
    values = [rng.getrandbits(64) or 1 for _ in range(20_000)]
    values += values[:500]  # repeats
    values += [v | (high << 40) for v in range(1, 100) for high in range(1, 4)]  # same slot, then probed on
    hashes = HashSet(capacity=16)
    reference: set[int] = set()
    for v in values:
        assert hashes.add(v) == (v not in reference)
        reference.add(v)
    assert len(hashes) == len(reference)
    assert all(not hashes.add(v) for v in reference)
    # at most 2/3 full, at least 1/3 after growth: 8 bytes a slot, 12 to 24 a member
    assert 12 * len(reference) <= hashes.nbytes <= 24 * len(reference)
    with pytest.raises(ValueError, match="non-zero"):
        hashes.add(0)


# --- near duplicates ----------------------------------------------------------------------------


def planted_corpus(seed: int) -> tuple[list[Document], dict[str, str]]:
    """80 unrelated documents of 300 words, plus 6 exact copies (whitespace changed), 5 near copies
    (1 word in 300 changed: similarity about 0.97) and 3 documents half rewritten (about 0.3).
    Returns the documents, and each planted duplicate's original."""
    rng = random.Random(seed)
    docs = [Document(f"doc{i:02d}", " ".join(words(rng, 300))) for i in range(80)]
    originals: dict[str, str] = {}
    for i in range(6):
        source = docs[i * 7]
        docs.append(Document(f"exact{i}", "\n" + source.text.replace(" ", "  ", 3) + " "))
        originals[f"exact{i}"] = source.name
    for i in range(5):
        source = docs[i * 11 + 1]
        docs.append(Document(f"near{i}", changed(source.text, rng, 1)))
        originals[f"near{i}"] = source.name
    for i in range(3):
        docs.append(Document(f"half{i}", changed(docs[i * 13 + 2].text, rng, 150)))
    rng.shuffle(docs)
    # a copy comes after its original, as the names in the report say
    order = {doc.name: i for i, doc in enumerate(docs)}
    for copy, original in originals.items():
        if order[copy] < order[original]:
            i, j = order[copy], order[original]
            docs[i], docs[j] = docs[j], docs[i]
            order[copy], order[original] = j, i
    return docs, originals


def test_near_duplicates_are_dropped_counted_and_named_with_their_similarity() -> None:
    docs, originals = planted_corpus(seed=3)
    by_name = {doc.name: doc for doc in docs}
    for i in range(3):  # the half-rewritten documents are well under the threshold
        assert jaccard(by_name[f"half{i}"].text, by_name[f"doc{i * 13 + 2:02d}"].text) < 0.5
    names, stats = kept(docs, BOTH)
    planted = set(originals)
    assert set(by_name) - set(names) == planted
    assert (stats.exact, stats.near) == (6, 5)
    assert sorted(stats.exact_names) == [f"exact{i}" for i in range(6)]
    assert sorted(p["dropped"] for p in stats.near_pairs) == [f"near{i}" for i in range(5)]
    for pair in stats.near_pairs:
        assert pair["kept"] == originals[pair["dropped"]]
        true = jaccard(by_name[pair["dropped"]].text, by_name[pair["kept"]].text)
        assert true > 0.9 and abs(pair["similarity"] - true) < 0.1  # MinHash estimates Jaccard
    assert stats.near_bytes == sum(len(by_name[f"near{i}"].text.encode()) for i in range(5))


def test_only_the_first_ten_near_pairs_are_named_but_all_are_counted() -> None:
    rng = random.Random(8)
    originals = [Document(f"doc{i}", " ".join(words(rng, 200))) for i in range(15)]
    copies = [Document(f"copy{i}", changed(doc.text, rng, 1)) for i, doc in enumerate(originals)]
    names, stats = kept(originals + copies, BOTH)
    assert names == [doc.name for doc in originals] and stats.near == 15
    assert [(p["dropped"], p["kept"]) for p in stats.near_pairs] == [
        (f"copy{i}", f"doc{i}") for i in range(10)
    ]


def test_exact_off_near_on_still_drops_exact_copies_as_near_ones() -> None:
    docs = [
        Document("a", " ".join(f"w{i}" for i in range(50))),
        Document("b", " ".join(f"w{i}" for i in range(50))),
    ]
    params = DedupParams(exact=False, near=True, threshold=0.8, num_perm=64, shingle_words=5)
    names, stats = kept(docs, params)
    assert names == ["a"] and stats.exact == 0
    assert stats.near_pairs == [{"dropped": "b", "kept": "a", "similarity": 1.0}]


def test_a_threshold_above_the_pairs_similarity_keeps_both() -> None:
    rng = random.Random(5)
    original = " ".join(words(rng, 200))
    copy = changed(original, rng, 8)  # about 40 of 196 shingles changed
    similarity = jaccard(original, copy)
    assert 0.6 < similarity < 0.75
    loose = DedupParams(exact=True, near=True, threshold=0.5, num_perm=256, shingle_words=5)
    strict = DedupParams(exact=True, near=True, threshold=0.9, num_perm=256, shingle_words=5)
    docs = [Document("original", original), Document("copy", copy)]
    assert kept(docs, loose)[0] == ["original"]
    assert kept(docs, strict)[0] == ["original", "copy"]


def test_a_long_document_is_shingled_a_slice_at_a_time_exactly_as_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(7)
    text = "\n".join(" ".join(words(rng, rng.randint(1, 9))) for _ in range(3000))
    whole = NearDuplicates(BOTH).signature(text).hashvalues
    monkeypatch.setattr(dedup, "SHINGLE_SLICE_CHARS", 100)  # hundreds of slices, words never cut
    monkeypatch.setattr(dedup, "SHINGLE_BATCH", 7)
    np.testing.assert_array_equal(NearDuplicates(BOTH).signature(text).hashvalues, whole)
    # and the shingles are those of the words, whichever slice they came from
    hashes = np.concatenate(list(dedup._shingle_hashes(text, 5)))
    assert len(hashes) == len(text.split()) - 4


def test_a_document_shorter_than_a_shingle_is_one_shingle() -> None:
    near = NearDuplicates(BOTH)
    assert near.match_or_add(Document("short", "Hello there")) is None
    assert near.match_or_add(Document("again", "hello   THERE")) == ("short", 1.0)
    assert near.match_or_add(Document("other", "hello where")) is None


def test_a_threshold_the_index_cannot_band_names_the_keys() -> None:
    params = DedupParams(exact=True, near=True, threshold=0.95, num_perm=16, shingle_words=5)
    with pytest.raises(ParamsError, match=r"data\.dedup\.threshold = 0\.95 with data\.dedup\.num_perm = 16"):
        list(drop_duplicates([Document("a", "text")], params, DedupStats()))


# --- the stage ----------------------------------------------------------------------------------


def run_extract_split(ws: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "stages.extract_split"],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def set_dedup(ws: Path, **dedup_params: object) -> None:
    params = yaml.safe_load((ws / "params.yaml").read_text(encoding="utf-8"))
    params["data"]["dedup"].update(dedup_params)
    (ws / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")


def splits(ws: Path) -> dict[str, list[Document]]:
    return {split: list(iter_split_file(ws / f"data/split/{split}.jsonl.zst")) for split in ("train", "val")}


def leaks(ws: Path, threshold: float) -> tuple[int, int]:
    """(exact, near) pairs of a val document and a train document with the same text, or a shingle
    similarity at or above `threshold`, by brute force."""
    parts = splits(ws)
    train = {dedup.normalise_whitespace(d.text) for d in parts["train"]}
    exact = sum(dedup.normalise_whitespace(d.text) in train for d in parts["val"])
    near = sum(jaccard(v.text, t.text) >= threshold for v in parts["val"] for t in parts["train"])
    return exact, near


@pytest.mark.slow
def test_planted_duplicates_never_land_in_both_splits_and_are_counted_in_the_report(tmp_path: Path) -> None:
    docs, originals = planted_corpus(seed=11)
    ws = workspace(tmp_path, include=["**/*.txt"], val_fraction=0.5)
    for doc in docs:
        (ws / "data/raw" / f"{doc.name}.txt").write_text(doc.text, encoding="utf-8")

    # without deduplication the planted copies straddle the split: the test below can fail
    set_dedup(ws, exact=False, near=False)
    assert run_extract_split(ws).returncode == 0
    exact_leaks, near_leaks = leaks(ws, 0.8)
    assert exact_leaks >= 1 and near_leaks > exact_leaks

    set_dedup(ws, exact=True, near=True)
    done = run_extract_split(ws)
    assert done.returncode == 0, done.stderr
    assert leaks(ws, 0.8) == (0, 0)
    parts = splits(ws)
    names = {d.name.removeprefix("data/raw/").removesuffix(".txt") for s in parts.values() for d in s}
    assert names == {doc.name for doc in docs} - set(originals)
    report = json.loads((ws / "reports/data.json").read_text(encoding="utf-8"))
    duplicates = report["duplicates"]
    assert duplicates["exact"]["dropped"] == 6 and duplicates["near"]["dropped"] == 5
    assert report["train"]["documents"] + report["val"]["documents"] == len(docs) - 11
    assert sorted(duplicates["exact"]["names"]) == sorted(f"exact{i}.txt" for i in range(6))
    assert {p["dropped"]: p["kept"] for p in duplicates["near"]["pairs"]} == {
        f"near{i}.txt": f"{originals[f'near{i}']}.txt" for i in range(5)
    }
    assert "6 exact duplicates dropped" in done.stdout and "5 near duplicates" in done.stdout


def refused(tmp_path: Path, dedup_value: object) -> str:
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["data"]["dedup"] = dedup_value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    with pytest.raises(ParamsError) as info:
        load_section("data", path)
    return str(info.value)


def test_dedup_params_are_validated_by_name(tmp_path: Path) -> None:
    good = dataclasses.asdict(EXACT)
    assert load_section("data", REPO / "params.yaml").dedup == DedupParams(**good)
    assert "data.dedup.threshold = 1.0" in refused(tmp_path, {**good, "threshold": 1.0})
    assert "data.dedup.num_perm = 8" in refused(tmp_path, {**good, "num_perm": 8})
    assert "data.dedup.shingle_words = 0" in refused(tmp_path, {**good, "shingle_words": 0})
    assert "data.dedup.exact = 'yes' is invalid: must be bool" in refused(tmp_path, {**good, "exact": "yes"})
    assert "unknown key data.dedup.jaccard" in refused(tmp_path, {**good, "jaccard": 0.9})
    assert "missing key data.dedup.near" in refused(tmp_path, {"exact": True})
    assert "section 'data.dedup' must be a mapping" in refused(tmp_path, True)
