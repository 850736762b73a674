"""Shared pytest fixtures."""

from __future__ import annotations

import os

import pytest
import torch

from gptcore.tokens import TokenStore


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
    """Train and val token stores of counting documents (see test_train), for training tests."""
    from test_train import counting_documents, write_store

    folder = tmp_path_factory.mktemp("tokens")
    return (
        write_store(folder / "train.h5", counting_documents(40, seed=0)),
        write_store(folder / "val.h5", counting_documents(8, seed=1)),
    )
