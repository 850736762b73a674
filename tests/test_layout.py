"""The package's architecture, as its imports draw it: layers that only import downwards, and no
import cycle, so that a reader can start at the bottom (errors, params) and never be sent up."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gptcore"

# lowest first; a module may import its own layer and the layers below it
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"errors", "atomic", "params", "presets", "sampling", "output_folder", "reports"}),
    ("data", {"data", "bpe", "tokenizer"}),
    (
        "model",
        {
            "model",
            "limits",
            "checkpoint",
            "device",
            "optimizers",
            "memory",
            "step",
            "generate",
            "evaluate",
            "distributed",
            "hf",
            "benchmark",
        },
    ),
    ("training", {"train", "autotune"}),
    ("features", {"finetune", "serve", "scaling"}),
    ("commands", {"cli"}),
]


def modules() -> dict[str, Path]:
    """gptcore's modules by dotted name under the package (`data.sources`; a package by its name)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name:
            found[name] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The gptcore modules `path` imports, anywhere in it (a function-level import counts too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "gptcore":
            base = node.module.removeprefix("gptcore").removeprefix(".")
            for alias in node.names:
                name = f"{base}.{alias.name}" if base else alias.name
                out.add(name if name in known else base)
        elif isinstance(node, ast.Import):
            out |= {a.name.removeprefix("gptcore.") for a in node.names if a.name.startswith("gptcore.")}
    return out - {""}


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    for i, (_, members) in enumerate(LAYERS):
        if top in members:
            return i
    raise AssertionError(f"gptcore.{module} is in no layer: add it to tests/test_layout.py's LAYERS")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (its modules in order, the first repeated at the end), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        for dep in sorted(graph.get(module, ())):
            if cycle := visit(dep, [*path, module]):
                return cycle
        done.add(module)
        return None

    return next((c for m in sorted(graph) if (c := visit(m, []))), None)


def upward(graph: dict[str, set[str]], module: str) -> list[str]:
    """What `module` imports from a layer above its own."""
    return sorted(dep for dep in graph[module] if layer_of(dep) > layer_of(module))


GRAPH = {name: imports(path, modules()) for name, path in modules().items()}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_a_module_imports_only_its_layer_and_the_layers_below(module: str) -> None:
    above = upward(GRAPH, module)
    assert not above, f"gptcore.{module} ({LAYERS[layer_of(module)][0]}) imports " + ", ".join(
        f"gptcore.{d} ({LAYERS[layer_of(d)][0]})" for d in above
    )


def test_no_import_cycle() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(f"gptcore.{m}" for m in cycle or [])


def test_the_checks_find_a_planted_cycle_and_a_planted_upward_import() -> None:
    assert find_cycle({**GRAPH, "model": GRAPH["model"] | {"limits"}}) in (
        ["limits", "model", "limits"],
        ["model", "limits", "model"],
    )
    assert upward({**GRAPH, "model": {"train"}}, "model") == ["train"]
