"""The DVC pipeline in a temporary git + DVC repository: its stages, the tiny training run and
word list the end-to-end tests use, and which gptcore modules and params sections a stage reads."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from conftest import REPO

STAGES = [
    "download",
    "extract_split",
    "build_vocab",
    "tokenize",
    "train",
    "evaluate",
    "download_benchmarks",
    "benchmark",
    "sample",
]
TINY_TRAIN = {
    "n_layer": 1,
    "n_head": 2,
    "n_embd": 32,
    "block_size": 32,
    "batch_size": 8,
    "max_iters": 30,
    "compile": False,  # compiling costs more than 30 tiny steps
    "eval_interval": 10,
    "eval_iters": 2,
    "log_interval": 5,
    "warmup_iters": 5,
}
# the words the generated corpus is made of
WORDS = re.findall(
    r"\w+",
    "the a king queen lord lady night day sword crown love death speak hear see know come go will "
    "shall not with my your his her our their and but for of to in upon good sweet fair noble",
)
# plumbing that shapes no output: params values are dependencies through `params:` instead
PLUMBING = {"errors", "params", "atomic"}


def environment(site_cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    # stages run `python -m ...`: the venv's python must come first on PATH
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["DVC_SITE_CACHE_DIR"] = str(site_cache)  # else /var/tmp/dvc/repo/<hash> per temp repo
    env["OMP_NUM_THREADS"] = "1"  # tiny models on a shared 2-core machine: threads only contend
    return env


class Repo:
    """A temporary git + DVC repository holding a copy of the pipeline."""

    def __init__(self, path: Path, env: dict[str, str]) -> None:
        self.path = path
        self.env = env

    def copy_in(self, *names: str) -> None:
        """Copy these files and folders of this checkout into the repository (no __pycache__)."""
        for name in names:
            src = REPO / name
            if src.is_dir():
                shutil.copytree(src, self.path / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, self.path / name)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(cmd, cwd=self.path, env=self.env, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited with {proc.returncode}\n"
                f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-3000:]}"
            )
        return proc

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "dvc", *args, check=check)

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", message)

    def read_json(self, rel: str) -> Any:
        return json.loads((self.path / rel).read_text(encoding="utf-8"))

    def edit_params(self, section: str, **changes: Any) -> None:
        path = self.path / "params.yaml"
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
        params[section].update(changes)
        path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def ran(stdout: str, stage: str) -> bool:
    return f"Running stage '{stage}'" in stdout


def module_path(module: str) -> str:
    """The file of a gptcore module named relative to the package (`data.sources`)."""
    return f"gptcore/{module.replace('.', '/')}.py"


def _gptcore_imports(path: Path) -> set[str]:
    """The gptcore modules `path` imports, named relative to the package (`model`, `data.sources`);
    `from gptcore.finetune import classify` names the module `finetune.classify`."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "gptcore":
            base = node.module.split(".")[1:]
            for alias in node.names:
                candidate = ".".join([*base, alias.name])
                if (REPO / module_path(candidate)).is_file():
                    modules.add(candidate)
                elif base:
                    modules.add(".".join(base))
        elif isinstance(node, ast.Import):
            modules |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("gptcore.")}
    return modules


def stage_imports(stage: str) -> tuple[set[str], set[str]]:
    """(gptcore modules that stages/<stage>.py uses, directly or through other gptcore modules,
    params sections it loads)."""
    script = REPO / "stages" / f"{stage}.py"
    modules: set[str] = set()
    todo = _gptcore_imports(script)
    while todo:
        module = todo.pop()
        if module not in modules:
            modules.add(module)
            if module not in PLUMBING:  # what plumbing imports only checks params (sampling rules)
                todo |= _gptcore_imports(REPO / module_path(module))
    sections = set()
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "load_section":
            sections.add(node.args[0].value)
    return modules, sections
