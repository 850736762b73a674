"""Shared pytest fixtures, and the repo path and data helpers that they and several test modules
use (`from conftest import ...`). Other helpers that several test modules share live in the
support_*.py modules beside this file: a test module never imports another."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from gptcore.data.token_store import TokenFileSummary, TokenIds, TokenStore, TokenWriter

# the vocabulary of counting_documents: ids 0..10 are "text", 11 is the end-of-text id
COUNTING_VOCAB = 12
REPO = Path(__file__).resolve().parents[1]

# the support modules' helpers assert as tests do: rewrite them as pytest rewrites test modules, so
# that a failing helper shows the values it compared (registered before any test module imports one)
pytest.register_assert_rewrite(
    "support_cli", "support_models", "support_pipeline", "support_serve", "support_stage", "support_train"
)


def workspace(tmp_path: Path, **data: object) -> Path:
    """A folder laid out like the repo: params.yaml (with `data` changes) and an empty data/raw."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["data"].update(data)
    params["tokenize"]["workers"] = 2
    params["vocab"]["kind"] = "char"  # one token per character: counts below are exact
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    (tmp_path / "data" / "raw").mkdir(parents=True)
    return tmp_path


def write_token_file(
    path: Path | str,
    documents: Iterable[TokenIds],
    *,
    vocab_size: int,
    eot_id: int,
    tokenizer_identity: dict[str, Any],
    source_bytes: int | None = None,
) -> TokenFileSummary:
    """A token file of already-encoded documents (each followed by eot), through the writer the
    tokenize stage uses; `source_bytes` is the UTF-8 bytes of their text in all (None: unknown)."""
    with TokenWriter(
        path, vocab_size=vocab_size, eot_id=eot_id, tokenizer_identity=tokenizer_identity
    ) as writer:
        for i, ids in enumerate(documents):
            # the writer sums per-document counts; the whole count goes with the first document
            share = None if source_bytes is None else (source_bytes if i == 0 else 0)
            writer.add_document(ids, source_bytes=share)
    assert writer.summary is not None
    return writer.summary


def counting_documents(n: int, seed: int) -> list[np.ndarray]:
    """Documents that count up mod 11 from a random start: easy to learn, so loss must fall."""
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(11)) + np.arange(int(rng.integers(20, 60)))) % 11 for _ in range(n)]


def write_counting_store(path: Path, documents: list[np.ndarray]) -> TokenStore:
    identity = {"kind": "char", "vocab_size": COUNTING_VOCAB, "sha256": "0" * 64}
    write_token_file(
        path, documents, vocab_size=COUNTING_VOCAB, eot_id=COUNTING_VOCAB - 1, tokenizer_identity=identity
    )
    return TokenStore(path)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # an end-to-end run is slow by definition: `pytest -m "not slow"` leaves it out with the others
    pipelines = set()
    for item in items:
        if item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.slow)
            pipelines.add(item.path)
    # pytest-xdist (pyproject.toml's addopts) runs each module whole on one worker, modules handed
    # out in this order: the modules that run whole pipelines, the longest, go first, so that the
    # workers end together instead of one running the longest module alone at the end
    items.sort(key=lambda item: item.path not in pipelines)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    # the tests' models are tiny: on a shared 2-core machine, torch's second worker thread only
    # busy-waits and makes them many times slower. Restore the setting afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def private_autotune_cache(tmp_path_factory: pytest.TempPathFactory):
    # train.dtype/compile: auto cache their timings per machine; tests (and the dvc runs they start,
    # which inherit the environment) must neither read the user's cache nor write to it
    before = os.environ.get("GPTCORE_CACHE_DIR")
    os.environ["GPTCORE_CACHE_DIR"] = str(tmp_path_factory.mktemp("gptcore-cache"))
    yield
    if before is None:
        os.environ.pop("GPTCORE_CACHE_DIR", None)
    else:
        os.environ["GPTCORE_CACHE_DIR"] = before


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[TokenStore, TokenStore]:
    """Train and val token stores of counting documents, for training tests."""
    folder = tmp_path_factory.mktemp("tokens")
    return (
        write_counting_store(folder / "train.h5", counting_documents(40, seed=0)),
        write_counting_store(folder / "val.h5", counting_documents(8, seed=1)),
    )
