"""`gptcore export --out PATH` never deletes or replaces anything gptcore did not write: a new or
empty folder is written, an earlier export has its own files replaced, and everything else (a
folder of the user's files, the model's folder, the working copy, home, root, a file, a device)
is refused with one line; `--force` adds the export beside foreign files, never over them."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from support_models import save_tiny_model

from gptcore.cli import main
from gptcore.output_folder import MARKER, OutputFolderError, output_folder

EXPORTED = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "models" / "model.pt"
    path.parent.mkdir()
    save_tiny_model(path)
    return path


def export(model: Path, out: Path | str, *extra: str) -> None:
    main(["export", "--model", str(model), "--out", str(out), *extra])


def refused(capsys: pytest.CaptureFixture, model: Path, out: Path | str, *extra: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        export(model, out, *extra)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line, no traceback
    return err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def exported_names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} - {MARKER}


def test_a_new_folder_gets_the_export_and_a_marker_listing_exactly_its_files(
    model_file: Path, tmp_path: Path
) -> None:
    export(model_file, tmp_path / "out" / "hf")
    names = exported_names(tmp_path / "out" / "hf")
    assert names >= EXPORTED
    marker = json.loads((tmp_path / "out" / "hf" / MARKER).read_text())
    assert marker == {"written_by": "gptcore", "kind": "hf", "files": sorted(names)}


def test_a_folder_of_user_files_is_refused_and_every_file_survives(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "d"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("x\n")
    (out / "sub" / "data.bin").write_bytes(b"\0" * 10)
    before = snapshot(out)
    err = refused(capsys, model_file, out)
    assert "holds files gptcore did not write (notes.txt, sub)" in err and "--force" in err
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == ["notes.txt", "sub"]


def test_force_adds_the_export_beside_user_files_and_replaces_none(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("x\n")
    export(model_file, out, "--force")
    assert (out / "notes.txt").read_text() == "x\n"
    assert exported_names(out) >= EXPORTED
    export(model_file, out)  # now it is an earlier export: no --force needed
    assert (out / "notes.txt").read_text() == "x\n"


def test_force_never_replaces_a_file_of_the_same_name_gptcore_did_not_write(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "downloaded-model"
    out.mkdir()
    (out / "config.json").write_text('{"theirs": true}\n')
    (out / "model.safetensors").write_bytes(b"their weights")
    before = snapshot(out)
    err = refused(capsys, model_file, out, "--force")
    assert "gptcore did not write it: it is never replaced, even with --force" in err
    assert snapshot(out) == before


def test_an_earlier_export_is_replaced_file_by_file_keeping_what_the_user_added(
    model_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "hf"
    export(model_file, out)
    (out / "README.md").write_text("my model card\n")
    marker = json.loads((out / MARKER).read_text())
    (out / "vocab.json").write_text("{}")  # a file an older export wrote and this one does not
    marker["files"].append("vocab.json")
    (out / MARKER).write_text(json.dumps(marker))
    (out / "config.json").write_text("stale")
    export(model_file, out)
    assert (out / "README.md").read_text() == "my model card\n"
    assert not (out / "vocab.json").exists()  # gptcore's own, no longer written
    assert json.loads((out / "config.json").read_text())["model_type"]
    assert json.loads((out / MARKER).read_text())["files"] == sorted(exported_names(out) - {"README.md"})
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []


def test_a_forged_or_broken_marker_makes_the_folder_foreign(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("x\n")
    for text in (
        "not json",
        '{"written_by": "gptcore", "kind": "hf", "files": ["../notes.txt"]}',
        "[" * 10**5,
    ):
        (out / MARKER).write_text(text)
        refused(capsys, model_file, out)
        assert (out / "notes.txt").read_text() == "x\n"


def test_the_models_own_folder_is_refused_even_with_force(
    model_file: Path, capsys: pytest.CaptureFixture
) -> None:
    before = snapshot(model_file.parent)
    for extra in ((), ("--force",)):
        err = refused(capsys, model_file, model_file.parent, *extra)
        assert f"is a folder holding {model_file}" in err
    refused(capsys, model_file, model_file.parent.parent, "--force")  # a folder above it too
    assert snapshot(model_file.parent) == before


def test_the_working_directory_and_a_repository_are_refused_even_with_force(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "train.py").write_text("print()\n")
    monkeypatch.chdir(work)
    assert "the working directory" in refused(capsys, model_file, ".", "--force")
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "code.py").write_text("x = 1\n")
    assert "a repository (it holds .git)" in refused(capsys, model_file, repo, "--force")
    assert sorted(p.name for p in work.iterdir()) == ["train.py"]
    assert sorted(p.name for p in repo.iterdir()) == [".git", "code.py"]


def test_home_and_the_filesystem_root_are_refused_even_with_force(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("# mine\n")
    monkeypatch.setenv("HOME", str(home))
    assert "your home directory" in refused(capsys, model_file, "~", "--force")
    assert sorted(p.name for p in home.iterdir()) == [".bashrc"]
    with (
        pytest.raises(OutputFolderError, match="the filesystem root"),
        output_folder("/", "hf", ["config.json"], force=True),
    ):
        raise AssertionError("the root was accepted")


def test_a_file_or_a_device_at_the_path_is_never_replaced(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    target = tmp_path / "report.txt"
    target.write_text("keep\n")
    assert "exists and is not a folder" in refused(capsys, model_file, target, "--force")
    assert target.read_text() == "keep\n"
    refused(capsys, model_file, os.devnull, "--force")
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_an_unwritable_place_is_one_line_and_leaves_nothing(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert "cannot write /proc/gptcore-export" in refused(capsys, model_file, "/proc/gptcore-export")
    (tmp_path / "blocker").write_text("a file where a folder would go\n")
    assert f"cannot write {tmp_path / 'blocker' / 'hf'}" in refused(
        capsys, model_file, tmp_path / "blocker" / "hf"
    )
    assert (tmp_path / "blocker").read_text() == "a file where a folder would go\n"


def test_a_symlink_to_a_folder_writes_into_that_folder_and_stays_a_link(
    model_file: Path, tmp_path: Path
) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    export(model_file, link)
    export(model_file, link)  # again, as an earlier export
    assert link.is_symlink() and exported_names(real) >= EXPORTED


def test_every_exported_file_has_the_same_ordinary_mode(model_file: Path, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        export(model_file, tmp_path / "hf")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "hf").iterdir()}
    assert set(modes.values()) == {0o644}, modes


def test_a_failed_export_into_an_earlier_one_leaves_it_whole(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "hf"
    export(model_file, out)
    (out / "notes.txt").write_text("x\n")
    before = snapshot(out)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("writer failed")

    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(RuntimeError, match="writer failed"):
        export(model_file, out)
    assert snapshot(out) == before  # no staging folder, no half-replaced file
