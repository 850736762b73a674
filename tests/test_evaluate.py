"""Tests of gptcore.evaluate: whole-split loss against a brute-force count, perplexity, bits per byte."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_token_file

from gptcore.data.token_store import TokenStore
from gptcore.errors import DataError
from gptcore.evaluate import SplitLoss, evaluate_sample, evaluate_split
from gptcore.model import GPT, GPTConfig

VOCAB = 11
BLOCK = 8
CPU = torch.device("cpu")
SOURCE_BYTES = 1234  # what the tokenizer recorded for the split's text


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16, dropout=0.2))
    with torch.no_grad():  # sharpen the logits so that a wrong context changes the loss visibly
        model.wte.weight.mul_(40)
    return model


def write_store(path: Path, n_tokens: int, source_bytes: int | None = SOURCE_BYTES) -> TokenStore:
    rng = np.random.default_rng(3)
    doc = rng.integers(0, VOCAB - 1, n_tokens - 1)  # one document; the writer appends the eot id
    identity = {"kind": "char", "vocab_size": VOCAB, "sha256": "0" * 64}
    write_token_file(
        path,
        [doc],
        vocab_size=VOCAB,
        eot_id=VOCAB - 1,
        tokenizer_identity=identity,
        source_bytes=source_bytes,
    )
    store = TokenStore(path)
    assert len(store) == n_tokens
    return store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> TokenStore:
    # 43 tokens: 5 full windows of 8 targets, then a last window of 2 targets
    return write_store(tmp_path_factory.mktemp("tokens") / "val.h5", 43)


@torch.no_grad()
def brute_force_nats(model: GPT, tokens: np.ndarray) -> float:
    """Score each target j >= 1 on its own, from the tokens since the start of its window.

    Windows of BLOCK targets tile the tokens without overlap: target j belongs to the window that
    starts at token BLOCK * ((j - 1) // BLOCK), and sees the tokens from there up to j - 1.
    """
    model.eval()
    total = 0.0
    for j in range(1, len(tokens)):
        start = BLOCK * ((j - 1) // BLOCK)
        context = torch.tensor(tokens[start:j], dtype=torch.long)[None]
        logits, _ = model(context)
        total += F.cross_entropy(logits[0, -1].double(), torch.tensor(int(tokens[j]))).item()
    return total


def test_every_target_is_scored_exactly_once(model: GPT, store: TokenStore) -> None:
    result = evaluate_split(model, store, block_size=BLOCK, batch_size=3, max_tokens=10**9, device=CPU)
    assert result.tokens == len(store) - 1
    assert result.n_bytes == pytest.approx(SOURCE_BYTES)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_split_loss_equals_brute_force_per_token_sum(model: GPT, store: TokenStore, batch_size: int) -> None:
    result = evaluate_split(
        model, store, block_size=BLOCK, batch_size=batch_size, max_tokens=10**9, device=CPU
    )
    expected = brute_force_nats(model, np.asarray(store.array))
    assert result.nats == pytest.approx(expected, rel=1e-5)
    assert result.loss == pytest.approx(expected / (len(store) - 1), rel=1e-5)


def test_perplexity_is_exp_loss_and_bits_per_byte_is_nats_over_ln2_over_bytes(
    model: GPT, store: TokenStore
) -> None:
    result = evaluate_split(model, store, block_size=BLOCK, batch_size=4, max_tokens=10**9, device=CPU)
    assert result.loss == pytest.approx(result.nats / result.tokens)
    assert result.perplexity == pytest.approx(math.exp(result.loss))
    assert result.bits_per_byte == pytest.approx(result.nats / math.log(2) / SOURCE_BYTES)


def test_split_loss_arithmetic() -> None:
    loss = SplitLoss(nats=30.0, tokens=10, n_bytes=20.0)
    assert loss.loss == 3.0
    assert loss.perplexity == pytest.approx(math.e**3)
    assert loss.bits_per_byte == pytest.approx(30.0 / math.log(2) / 20.0)
    assert SplitLoss(nats=30.0, tokens=10).bits_per_byte is None  # bytes unknown: no figure


@pytest.mark.parametrize("max_tokens", [1, 2, 9, 17, 20])
def test_max_tokens_caps_the_scored_tokens(model: GPT, store: TokenStore, max_tokens: int) -> None:
    result = evaluate_split(model, store, block_size=BLOCK, batch_size=2, max_tokens=max_tokens, device=CPU)
    assert result.tokens == max_tokens - 1
    if max_tokens > 1:
        expected = brute_force_nats(model, np.asarray(store.array[:max_tokens]))
        assert result.nats == pytest.approx(expected, rel=1e-5)
    # the bytes of a prefix are taken pro rata from the split's total
    assert result.n_bytes == pytest.approx(SOURCE_BYTES * (max_tokens - 1) / (len(store) - 1))


def test_evaluation_runs_in_eval_mode_so_dropout_does_not_change_it(model: GPT, store: TokenStore) -> None:
    model.train()
    first = evaluate_split(model, store, block_size=BLOCK, batch_size=4, max_tokens=10**9, device=CPU)
    model.train()
    second = evaluate_split(model, store, block_size=BLOCK, batch_size=4, max_tokens=10**9, device=CPU)
    assert first == second


def test_store_without_source_bytes_is_refused(model: GPT, tmp_path: Path) -> None:
    store = write_store(tmp_path / "val.h5", 20, source_bytes=None)
    with pytest.raises(DataError, match="does not record its source bytes"):
        evaluate_split(model, store, block_size=BLOCK, batch_size=4, max_tokens=10**9, device=CPU)


def test_evaluate_sample_is_deterministic_and_scores_whole_batches(model: GPT, store: TokenStore) -> None:
    a = evaluate_sample(model, store, block_size=BLOCK, batch_size=2, n_tokens=50, seed=0, device=CPU)
    b = evaluate_sample(model, store, block_size=BLOCK, batch_size=2, n_tokens=50, seed=0, device=CPU)
    assert a == b
    assert a.tokens == (50 // (BLOCK * 2)) * BLOCK * 2
    other = evaluate_sample(model, store, block_size=BLOCK, batch_size=2, n_tokens=50, seed=1, device=CPU)
    assert other.nats != a.nats
    # fewer tokens than one batch still scores one batch
    assert (
        evaluate_sample(model, store, block_size=BLOCK, batch_size=2, n_tokens=1, seed=0, device=CPU).tokens
        == BLOCK * 2
    )
