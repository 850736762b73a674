"""Shared pytest fixtures."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[TokenStore, TokenStore]:
    """Train and val token stores of counting documents (see test_train), for training tests."""
    from test_train import counting_documents, write_store

    folder = tmp_path_factory.mktemp("tokens")
    return (
        write_store(folder / "train.h5", counting_documents(40, seed=0)),
        write_store(folder / "val.h5", counting_documents(8, seed=1)),
    )
