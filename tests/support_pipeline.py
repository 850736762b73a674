"""The DVC pipeline in a temporary git + DVC repository: its stages, the tiny training run and
word list the end-to-end tests use, and which gptcore modules and params sections a stage reads."""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
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
# the genres of write_plays's corpus (one folder each) and the speakers of its speeches
GENRES = ("comedies", "histories", "tragedies")
NAMES = ("ANNE", "BEN", "CAROL", "DUKE")
# plumbing that shapes no output: params values are dependencies through `params:` instead
PLUMBING = {"errors", "params", "atomic"}


def write_plays(folder: Path) -> None:
    """Three genres of three plays (a folder each): scenes of speeches, each genre with words of
    its own. Both pipelines train on it: the classifier learns the genres, the instruction model
    the speeches."""
    rng = random.Random(0)
    for g, genre in enumerate(GENRES):
        words = WORDS[g::3] + ["the", "and"]
        for p in range(3):
            lines = [f"# Play {genre} {p}", ""]
            for scene in range(3):
                lines += [f"### SCENE {scene}.", "", "_Enter all_", ""]
                for _ in range(12):
                    speech = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 7))) for _ in range(2)]
                    lines += [f"**{rng.choice(NAMES)}**  ", *(s.capitalize() + ".  " for s in speech), ""]
            path = folder / genre / f"play{p}.md"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(lines), encoding="utf-8")


# the identity of the commits a test repository makes (its own .git/config: Repo.init)
IDENTITY = {"user.name": "gptcore tests", "user.email": "tests@gptcore.invalid"}


def environment(site_cache: Path) -> dict[str, str]:
    """The environment of the git and DVC commands the pipeline tests run: hermetic, so that they
    pass on a machine with no git identity and an empty home, and never read this one's. HOME is
    an empty folder beside `site_cache`; git reads no global or system config and no GIT_* or
    EMAIL variable of the caller (an identity among them would hide a repository without one)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GIT_") and k not in ("EMAIL", "XDG_CONFIG_HOME")
    }
    home = site_cache.parent / "home"
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env["GIT_CONFIG_GLOBAL"] = os.devnull
    env["GIT_CONFIG_NOSYSTEM"] = "1"
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

    def init(self) -> None:
        """Make the folder a git repository with its own commit identity (`dvc exp run` commits
        experiments, and the environment has none), and a DVC one."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.run("git", "init", "-q", "-b", "main")
        for key, value in IDENTITY.items():
            self.run("git", "config", key, value)
        self.dvc("init", "-q")

    def copy(self, path: Path) -> Repo:
        """A copy of the repository (git history, DVC cache and run-cache included) at `path`, for
        a test that changes it: a repository a module's tests share is theirs to read only."""
        shutil.copytree(self.path, path, symlinks=True)
        return Repo(path, self.env)

    def fingerprint(self) -> dict[str, str]:
        """sha256 of every file of the working tree, .git and .dvc aside, with the commit checked
        out: what the next test to read the repository would see."""
        files = {
            str(p.relative_to(self.path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(self.path.rglob("*"))
            if p.is_file() and p.relative_to(self.path).parts[0] not in (".git", ".dvc")
        }
        files["HEAD"] = self.run("git", "rev-parse", "HEAD").stdout.strip()
        return files

    def copy_in(self, *names: str) -> None:
        """Copy these files and folders of this checkout into the repository (no __pycache__)."""
        for name in names:
            src = REPO / name
            if src.is_dir():
                shutil.copytree(src, self.path / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                (self.path / name).parent.mkdir(parents=True, exist_ok=True)
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
        self.run("git", "commit", "-qm", message)

    def read_json(self, rel: str) -> Any:
        return json.loads((self.path / rel).read_text(encoding="utf-8"))

    def edit_params(self, section: str, **changes: Any) -> None:
        path = self.path / "params.yaml"
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
        params[section].update(changes)
        path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


@contextlib.contextmanager
def unchanged(repo: Repo) -> Iterator[Repo]:
    """Hand a shared repository to one test, then check that the test left it as it found it."""
    before = repo.fingerprint()
    yield repo
    after = repo.fingerprint()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, (
        f"the test changed the shared repository {repo.path} ({changed[:5]}): work on repo.copy()"
    )


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
