"""The README and docs/ as a newcomer reads them: every link and anchor resolves, the README stays a
short front door whose set-up commands are the ones CI runs, and its Layout names what gptcore/ holds."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_LINES = 250

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target) and ![alt](target), with an optional "title"
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+).+?\1")
# a repository path named in prose or in a command: gptcore/serve/server.py, tests/test_hf.py, ...
REPO_PATH = re.compile(r"(?<![\w/.-])((?:gptcore|tests|benchmarks)/[\w./-]*\w)")


def markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lowercased, punctuation other than - and _
    removed, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text, not its target
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[str]:
    """The link and image targets of a markdown file, outside code blocks and code spans."""
    targets = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        targets += LINK.findall(INLINE_CODE.sub("", line))
    return targets


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{target}: {linked} does not exist")
        elif anchor and linked.suffix != ".md":
            problems.append(f"{target}: an anchor into a file that is not markdown")
        elif anchor and anchor not in anchors(linked):
            problems.append(f"{target}: no heading of {linked.name} has the anchor #{anchor}")
    return problems


def section(text: str, title: str) -> str:
    """The body of the `## title` section of a markdown text."""
    lines = text.splitlines()
    start = lines.index(f"## {title}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end])


def ci_setup_commands() -> list[str]:
    """The install and the test command of .ci/run: the command line that makes the virtual
    environment and the last one (the lint step runs between them)."""
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    commands = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    install = next(line for line in commands if line.startswith("python3 -m venv "))
    return [install, commands[-1]]


def layout_tree(readme_text: str) -> dict[str, set[str]]:
    """What the README's Layout names inside gptcore/: {"": top-level entries, "data/": the
    entries of gptcore/data/, ...}; a module is named `name.py`, a subpackage `name/`."""
    block = section(readme_text, "Layout").splitlines()
    start = next(i for i, line in enumerate(block) if line.startswith("gptcore/"))
    tree: dict[str, set[str]] = {"": set()}
    parent = ""
    for line in block[start + 1 :]:
        if not line.startswith(" "):  # back at the repository's top level
            break
        name = line.split()[0]
        if len(line) - len(line.lstrip(" ")) <= 2:
            tree[""].add(name)
            parent = name if name.endswith("/") else ""
            if parent:
                tree[parent] = set()
        elif parent:
            tree[parent].add(name)
    return tree


def package_tree(package: Path) -> dict[str, set[str]]:
    """What gptcore/ holds, in layout_tree's shape: its modules and subpackage folders, and each
    subpackage's files (modules, folders and the data files shipped with it, `__init__.py` aside)."""

    def entries(folder: Path, top: bool) -> set[str]:
        found = set()
        for entry in folder.iterdir():
            if entry.name.startswith((".", "__pycache__")) or (not top and entry.name == "__init__.py"):
                continue
            if entry.is_dir():
                found.add(f"{entry.name}/")
            elif entry.suffix == ".py" or not top:
                found.add(entry.name)
        return found

    tree = {"": entries(package, top=True)}
    for name in sorted(tree[""]):
        if name.endswith("/"):
            tree[name] = entries(package / name, top=False)
    return tree


def is_module_or_package(name: str) -> bool:
    return name.endswith((".py", "/"))


def test_every_relative_link_and_anchor_resolves():
    problems = {path.name: broken_links(path) for path in markdown_files()}
    assert not {name: found for name, found in problems.items() if found}


def test_readme_links_every_docs_file():
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in links(README)}
    docs = [path for path in markdown_files() if path != README]
    assert docs, "docs/ holds no markdown files"
    assert [path.name for path in docs if path.resolve() not in linked] == []


def test_every_docs_file_starts_by_saying_what_it_covers():
    for path in markdown_files()[1:]:
        lines = path.read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("# "), f"{path.name} does not start with a title"
        first = next(line for line in lines[1:] if line.strip())
        assert not first.startswith(("#", "```", "|", "-")), f"{path.name}: no line on what it covers"


def test_repository_paths_named_in_tests_and_benchmarks_exist():
    missing = [
        f"{path.name}: {named}"
        for path in markdown_files()
        for named in REPO_PATH.findall(path.read_text(encoding="utf-8"))
        if not named.startswith("gptcore/") and not (ROOT / named).exists()
    ]
    assert missing == []


def test_module_paths_named_in_the_docs_exist():
    missing = [
        f"{path.name}: {named}"
        for path in markdown_files()
        for named in REPO_PATH.findall(path.read_text(encoding="utf-8"))
        if named.startswith("gptcore/") and not (ROOT / named).exists()
    ]
    assert missing == []


def test_readme_is_a_short_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def test_readme_set_up_commands_are_the_ones_ci_runs():
    install, test = ci_setup_commands()
    quick_start = section(README.read_text(encoding="utf-8"), "Quick start").splitlines()
    assert install in quick_start, f"Quick start lacks the line {install!r}"
    assert test in quick_start, f"Quick start lacks the line {test!r}"
    assert quick_start.index(install) < quick_start.index(test)


def test_readme_layout_names_every_module_and_subpackage_of_gptcore():
    named = layout_tree(README.read_text(encoding="utf-8"))
    held = package_tree(ROOT / "gptcore")
    unnamed = {
        folder or "gptcore/": sorted(
            n for n in held[folder] - named.get(folder, set()) if is_module_or_package(n)
        )
        for folder in held
    }
    assert {folder: names for folder, names in unnamed.items() if names} == {}


def test_readme_layout_names_nothing_gptcore_lacks():
    named = layout_tree(README.read_text(encoding="utf-8"))
    held = package_tree(ROOT / "gptcore")
    stale = {folder or "gptcore/": sorted(named[folder] - held.get(folder, set())) for folder in named}
    assert {folder: names for folder, names in stale.items() if names} == {}


# Code says why; the figures, the machines they were measured on and their history live in docs/.
MACHINE_NAME = re.compile(r"\b(xeon|epyc|ryzen|this machine)\b", re.IGNORECASE)
MEASURED_SPEED = re.compile(
    r"\d[\d,.]* ?(tokens/s|tokens per second|ms/step|s/step|GFLOP/s|MB/s|x faster|x slower|x as fast)"
)
# a section named in code, comments and messages: README, "Title" / README's "Title" / README.md#anchor,
# and docs/training.md, "Title" / docs/training.md#anchor
README_SECTION = re.compile(r"README(?:\.md)?(?:'s)?,? \"([^\"]+)\"|README\.md#([\w-]+)")
DOCS_SECTION = re.compile(r"docs/([\w-]+\.md),? \"([^\"]+)\"|docs/([\w-]+\.md)#([\w-]+)")
POINTING_FILES = ("params.yaml", "dvc.yaml", "finetune/dvc.yaml")


def source_files() -> list[Path]:
    return sorted(path for folder in ("gptcore", "stages") for path in (ROOT / folder).rglob("*.py"))


def comments_and_docstrings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every comment and every bare string statement (docstrings) of a module."""
    source = path.read_text(encoding="utf-8")
    found = [
        (token.start[0], token.string)
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            found += [(node.lineno + i, line) for i, line in enumerate(node.value.value.splitlines())]
    return found


def flattened(text: str) -> str:
    """The text as one line: comment markers at line starts dropped, so a pointer wrapped over two
    comment lines reads as it would unwrapped."""
    return re.sub(r"\s*\n\s*(?:#+\s*)?", " ", text)


def test_code_comments_leave_machines_and_measured_speeds_to_the_docs():
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text.strip()}"
        for path in source_files()
        for line, text in comments_and_docstrings(path)
        if MACHINE_NAME.search(text) or MEASURED_SPEED.search(text)
    ]
    assert found == []


def test_sections_named_in_code_are_where_the_code_says():
    paths = [
        *source_files(),
        *sorted((ROOT / "benchmarks").rglob("*.py")),
        *(ROOT / name for name in POINTING_FILES),
    ]
    problems = []
    for path in paths:
        text = flattened(path.read_text(encoding="utf-8"))
        where = path.relative_to(ROOT)
        for title, anchor in README_SECTION.findall(text):
            if (anchor or github_slug(title)) not in anchors(README):
                problems.append(f"{where}: README has no section {title or anchor!r}")
        for file, title, file_of_anchor, anchor in DOCS_SECTION.findall(text):
            doc = ROOT / "docs" / (file or file_of_anchor)
            if not doc.exists():
                problems.append(f"{where}: docs/{doc.name} does not exist")
            elif (anchor or github_slug(title)) not in anchors(doc):
                problems.append(f"{where}: docs/{doc.name} has no section {title or anchor!r}")
    assert problems == []
