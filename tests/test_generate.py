"""Tests of gptcore.generate: logit filters, greedy and seeded sampling, eot stops, context crops."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gptcore.generate import (
    complete,
    complete_batch,
    filter_logits,
    generate,
    generate_stream,
    sample_next,
    stream_completion,
)
from gptcore.model import GPT, GPTConfig, KVCache
from gptcore.sampling import Sampling
from gptcore.tokenizer import CharTokenizer

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\nROMEO: JULIET:\n"


@pytest.fixture(scope="module")
def tok() -> CharTokenizer:
    return CharTokenizer.train([TEXT])


@pytest.fixture(scope="module")
def model(tok: CharTokenizer) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32)
    return GPT(config).eval()


class CountingModel(nn.Module):
    """A stand-in GPT whose next token is always (last token + 1) mod V; it records context lengths
    (its next token depends on the last one only, so it works with or without a KV cache)."""

    def __init__(self, vocab_size: int = 10, block_size: int = 8):
        super().__init__()
        self.config = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=1, n_embd=8)
        self.dummy = nn.Parameter(torch.zeros(1))  # a parameter, so the model has a device
        self.lengths: list[int] = []
        self.eval()

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> tuple[torch.Tensor, None]:
        # with a cache, idx continues the cached tokens: the context is both
        context = idx.shape[1] + (cache.length if cache is not None else 0)
        if context > self.config.block_size:
            raise ValueError("context longer than block_size")
        if cache is not None:
            cache.length = context
        self.lengths.append(context)
        nxt = (idx + 1) % self.config.vocab_size
        return nn.functional.one_hot(nxt, self.config.vocab_size).float() * 10.0, None


# ---------------------------------------------------------------------------------------------
# filter_logits


def test_top_k_keeps_exactly_the_k_largest_logits() -> None:
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5], [5.0, 4.0, 3.0, 2.0, 1.0]])
    out = filter_logits(logits, top_k=2)
    assert torch.isfinite(out).sum(dim=-1).tolist() == [2, 2]
    assert out[0, 1] == 3.0 and out[0, 3] == 2.0
    assert out[1, 0] == 5.0 and out[1, 1] == 4.0
    # ties at the threshold still leave exactly k
    assert torch.isfinite(filter_logits(torch.zeros(1, 6), top_k=3)).sum() == 3


def test_top_p_keeps_the_smallest_set_whose_mass_reaches_p() -> None:
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])  # sorted: 1 (0.5), 3 (0.3), 0 (0.15), 2 (0.05)
    logits = probs.log()
    kept = {
        p: set(torch.isfinite(filter_logits(logits, top_p=p)).nonzero().flatten().tolist())
        for p in (0.3, 0.5, 0.75, 0.9, 0.97, 1.0)
    }
    assert kept[0.3] == {1}
    assert kept[0.5] == {1}  # 0.5 already reaches 0.5
    assert kept[0.75] == {1, 3}
    assert kept[0.9] == {1, 3, 0}
    assert kept[0.97] == {0, 1, 2, 3}
    assert kept[1.0] == {0, 1, 2, 3}
    # the surviving logits are untouched (renormalising is the softmax's job)
    assert torch.equal(filter_logits(logits, top_p=0.75)[[1, 3]], logits[[1, 3]])


def test_top_p_always_keeps_the_most_likely_token() -> None:
    logits = torch.tensor([[0.0, 0.0, 10.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    out = filter_logits(logits, top_p=1e-6)
    assert torch.isfinite(out).sum(dim=-1).tolist() == [1, 1]
    assert out.argmax(dim=-1).tolist() == [2, 3]


def test_top_k_then_top_p_and_input_left_unchanged() -> None:
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    before = logits.clone()
    out = filter_logits(logits, top_k=3, top_p=0.99)
    assert torch.isfinite(out).tolist() == [True, True, True, False, False]
    assert torch.equal(logits, before)
    assert filter_logits(logits) is not logits


@pytest.mark.parametrize("kwargs", [{"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5}])
def test_filter_logits_rejects_settings_out_of_range(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        filter_logits(torch.zeros(3), **kwargs)


# ---------------------------------------------------------------------------------------------
# sample_next


def test_top_k_sampling_never_emits_a_token_outside_the_k_most_likely() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 50, generator=gen).expand(4000, 50)
    top5 = set(logits[0].topk(5).indices.tolist())
    drawn = sample_next(logits, Sampling(temperature=1.5, top_k=5), gen)
    assert set(drawn.tolist()) == top5  # only the top 5, and each of them turns up


def test_top_p_sampling_draws_only_from_the_nucleus() -> None:
    gen = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.4, 0.02, 0.3, 0.03, 0.2, 0.05])
    drawn = sample_next(probs.log().expand(4000, 6), Sampling(top_p=0.85), gen)
    assert set(drawn.tolist()) == {0, 2, 4}  # 0.4 + 0.3 + 0.2 = 0.9 reaches 0.85


def test_temperature_zero_is_argmax() -> None:
    logits = torch.randn(7, 20, generator=torch.Generator().manual_seed(1))
    assert torch.equal(
        sample_next(logits, Sampling(temperature=0.0, top_k=3, top_p=0.5)), logits.argmax(dim=-1)
    )


# ---------------------------------------------------------------------------------------------
# generate


def test_greedy_generation_is_argmax_of_the_model_and_deterministic(model: GPT) -> None:
    prompt = torch.tensor([[1, 2, 3]])
    out = generate(
        model,
        prompt,
        Sampling(max_new_tokens=10, temperature=0.0),
        generator=torch.Generator().manual_seed(5),
    )
    idx = prompt
    with torch.no_grad():
        for _ in range(10):
            idx = torch.cat([idx, model(idx)[0][:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    assert torch.equal(out, idx)
    assert torch.equal(
        generate(model, prompt, Sampling(max_new_tokens=10, temperature=0.0)), out
    )  # seed-free


def test_same_seed_same_tokens_different_seed_different_tokens(model: GPT) -> None:
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])

    def run(seed: int) -> torch.Tensor:
        return generate(
            model,
            prompt,
            Sampling(max_new_tokens=30, temperature=1.0, top_k=10),
            generator=torch.Generator().manual_seed(seed),
        )

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_stream_yields_one_step_per_token_and_matches_generate(model: GPT) -> None:
    prompt = torch.tensor([[1, 2], [3, 4]])
    steps = list(
        generate_stream(model, prompt, Sampling(max_new_tokens=6), generator=torch.Generator().manual_seed(3))
    )
    assert len(steps) == 6 and all(s.shape == (2,) for s in steps)
    full = generate(model, prompt, Sampling(max_new_tokens=6), generator=torch.Generator().manual_seed(3))
    assert torch.equal(full[:, 2:], torch.stack(steps, dim=1))


def test_generation_stops_at_eot_and_pads_rows_that_finished_first() -> None:
    counting = CountingModel(vocab_size=10)
    eot = 9
    # row 0 reaches 9 after 2 tokens (7, 8, 9), row 1 after 6 (4, ..., 9)
    out = generate(
        counting, torch.tensor([[6], [3]]), Sampling(max_new_tokens=20, temperature=0.0), eot_id=eot
    )
    assert out.tolist() == [[6, 7, 8, 9, 9, 9, 9], [3, 4, 5, 6, 7, 8, 9]]
    # without stop_at_eot it runs on, finished rows padded with eot
    out = generate(
        counting,
        torch.tensor([[6], [3]]),
        Sampling(max_new_tokens=8, temperature=0.0),
        eot_id=eot,
        stop_at_eot=False,
    )
    assert out.shape == (2, 9) and out[0, 3:].tolist() == [eot] * 6
    # without an eot_id nothing stops it
    assert generate(counting, torch.tensor([[6]]), Sampling(max_new_tokens=8, temperature=0.0)).shape == (
        1,
        9,
    )


def test_context_longer_than_block_size_is_cropped(model: GPT) -> None:
    counting = CountingModel(vocab_size=10, block_size=8)
    out = generate(counting, torch.tensor([[0] * 12 + [1]]), Sampling(max_new_tokens=20, temperature=0.0))
    assert out.shape == (1, 33)
    assert max(counting.lengths) == 8  # the model never saw more than block_size tokens
    assert out[0, 13:].tolist() == [(2 + i) % 10 for i in range(20)]
    # a real GPT raises on T > block_size; generating three blocks' worth works
    out = generate(
        model,
        torch.ones(1, 20, dtype=torch.long),
        Sampling(max_new_tokens=40),
        generator=torch.Generator().manual_seed(0),
    )
    assert out.shape == (1, 60)


def test_generate_refuses_a_model_in_training_mode_and_empty_prompts(model: GPT) -> None:
    model.train()
    try:
        with pytest.raises(ValueError, match="eval"):
            generate(model, torch.tensor([[1]]), Sampling(max_new_tokens=2))
    finally:
        model.eval()
    with pytest.raises(ValueError, match="shape"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), Sampling(max_new_tokens=2))


def test_generation_runs_without_building_an_autograd_graph(model: GPT) -> None:
    out = generate(model, torch.tensor([[1]]), Sampling(max_new_tokens=3))
    assert not out.requires_grad and out.grad_fn is None


# ---------------------------------------------------------------------------------------------
# text completions


def test_completion_is_the_decoded_tokens_up_to_eot(model: GPT, tok: CharTokenizer) -> None:
    prompt = "ROMEO:"
    gen_a, gen_b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    text = complete(model, tok, prompt, Sampling(max_new_tokens=40, temperature=1.0), generator=gen_a)
    ids = generate(
        model,
        torch.tensor([tok.encode(prompt)]),
        Sampling(max_new_tokens=40),
        generator=gen_b,
        eot_id=tok.eot_id,
    )
    new = ids[0, len(prompt) :].tolist()
    if tok.eot_id in new:
        new = new[: new.index(tok.eot_id)]
    assert text == tok.decode(new)
    assert "<|endoftext|>" not in text


def test_completion_stops_at_eot_and_holds_back_replacement_characters() -> None:
    tok = CharTokenizer(list("abcdefgh"))  # ids 0-7 letters, 8 <|unk|> (decodes to U+FFFD), 9 eot
    counting = CountingModel(vocab_size=tok.vocab_size)
    pieces = list(stream_completion(counting, tok, "f", Sampling(max_new_tokens=20, temperature=0.0)))
    # f -> g, h, unk, then eot ends it; the U+FFFD piece waits for the next token (or the end)
    assert "".join(pieces) == "gh\ufffd"
    assert pieces[:2] == ["g", "h"]
    # an empty prompt starts from <|endoftext|>: the counting model then wraps round to id 0
    assert complete(counting, tok, "", Sampling(max_new_tokens=3, temperature=0.0)) == "abc"


def test_temperature_sharpens_or_flattens_the_distribution_drawn_from() -> None:
    # 40,000 draws from one row of logits per temperature: the frequencies follow softmax(logits / T)
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    for temperature in (0.5, 1.0, 2.0):
        draws = sample_next(
            logits.expand(40_000, 4), Sampling(temperature=temperature), torch.Generator().manual_seed(0)
        )
        freq = torch.bincount(draws, minlength=4).float() / 40_000
        expected = (logits / temperature).softmax(-1)
        torch.testing.assert_close(freq, expected, atol=0.01, rtol=0)
    # lower temperature, more mass on the most likely token
    assert (logits / 0.5).softmax(-1)[0] > logits.softmax(-1)[0] > (logits / 2.0).softmax(-1)[0]


def test_max_new_tokens_bounds_the_completion(model: GPT, tok: CharTokenizer) -> None:
    for n in (1, 7, 30):
        steps = list(
            generate_stream(
                model,
                torch.tensor([[1]]),
                Sampling(max_new_tokens=n),
                generator=torch.Generator().manual_seed(1),
            )
        )
        assert len(steps) == n
    assert (
        len(complete(model, tok, "ROMEO:", Sampling(max_new_tokens=5, temperature=0.0))) <= 5
    )  # char tokenizer: 1 token, 1 char


def test_stop_strings_end_the_completion_just_before_them() -> None:
    tok = CharTokenizer(list("abcdefgh"))
    counting = CountingModel(vocab_size=tok.vocab_size)  # from "a": b, c, d, e, f, ...
    assert complete(counting, tok, "a", Sampling(max_new_tokens=7, temperature=0.0)) == "bcdefgh"
    assert complete(counting, tok, "a", Sampling(max_new_tokens=7, temperature=0.0, stop=["de"])) == "bc"
    assert (
        complete(counting, tok, "a", Sampling(max_new_tokens=7, temperature=0.0, stop=["fg", "d"])) == "bc"
    )  # the first to appear
    assert (
        complete(counting, tok, "a", Sampling(max_new_tokens=7, temperature=0.0, stop=["xyz"])) == "bcdefgh"
    )
    # streamed: a possible start of a stop string is held back, never shown and then retracted
    pieces = list(
        stream_completion(counting, tok, "a", Sampling(max_new_tokens=7, temperature=0.0, stop=["dx"]))
    )
    assert pieces == ["b", "c", "de", "f", "g", "h"]  # "d" waited for the "e" that cleared it
    # generation ends at the stop string: no tokens are spent past it
    counting.lengths.clear()
    complete(counting, tok, "a", Sampling(max_new_tokens=7, temperature=0.0, stop=["c"]))
    assert len(counting.lengths) == 2
    with pytest.raises(ValueError, match="must be non-empty strings"):
        complete(counting, tok, "a", Sampling(max_new_tokens=3, stop=[""]))


def test_several_samples_are_drawn_as_one_batch(model: GPT, tok: CharTokenizer, monkeypatch) -> None:
    calls: list[int] = []
    original = GPT.forward

    def counted(self, idx, *args, **kwargs):
        calls.append(idx.shape[0])
        return original(self, idx, *args, **kwargs)

    monkeypatch.setattr(GPT, "forward", counted)
    texts = complete_batch(
        model, tok, "ROMEO:", 4, Sampling(max_new_tokens=10), generator=torch.Generator().manual_seed(2)
    )
    assert len(texts) == 4 and len(set(texts)) > 1  # four different draws
    assert set(calls) == {4} and len(calls) <= 10  # every forward pass carries all four rows
    again = complete_batch(
        model, tok, "ROMEO:", 4, Sampling(max_new_tokens=10), generator=torch.Generator().manual_seed(2)
    )
    assert again == texts
    greedy = complete_batch(model, tok, "ROMEO:", 3, Sampling(max_new_tokens=10, temperature=0.0))
    assert greedy == [complete(model, tok, "ROMEO:", Sampling(max_new_tokens=10, temperature=0.0))] * 3


# ---------------------------------------------------------------------------------------------
# KV cache


def test_cached_forward_gives_the_logits_of_the_full_forward(model: GPT) -> None:
    torch.manual_seed(1)
    idx = torch.randint(0, model.config.vocab_size, (2, model.config.block_size))
    with torch.inference_mode():
        full, _ = model(idx)
        cache = KVCache(model.config, 2, idx.device, torch.float32)
        # a prefill of 5, single tokens, then a chunk of 3 on a non-empty cache (the masked path)
        pieces = [(0, 5), (5, 6), (6, 7), (7, 10), (10, model.config.block_size)]
        for a, b in pieces:
            logits, _ = model(idx[:, a:b], cache=cache)
            torch.testing.assert_close(logits, full[:, a:b], rtol=1e-5, atol=1e-5)
        assert cache.length == model.config.block_size


@pytest.mark.parametrize("prompt_len", [1, 5, 16, 23])
@pytest.mark.parametrize("new", [9, 40])
def test_greedy_output_with_the_cache_equals_without_it(model: GPT, prompt_len: int, new: int) -> None:
    # float64: the cached and full computations round differently, and a random model's top two
    # logits can lie within float32 rounding of each other; the sequences must not hinge on that
    wide = copy.deepcopy(model).double()
    prompt = torch.arange(prompt_len).remainder(model.config.vocab_size)[None, :].repeat(2, 1)
    prompt[1] = prompt[1].flip(0)
    cached = generate(wide, prompt, Sampling(max_new_tokens=new, temperature=0.0), use_cache=True)
    uncached = generate(wide, prompt, Sampling(max_new_tokens=new, temperature=0.0), use_cache=False)
    assert cached.shape == (2, prompt_len + new)
    assert torch.equal(cached, uncached)


def test_sampling_with_the_cache_draws_the_same_tokens(model: GPT) -> None:
    wide = copy.deepcopy(model).double()
    prompt = torch.tensor([[1, 2, 3]])
    runs = [
        generate(
            wide,
            prompt,
            Sampling(max_new_tokens=50, top_k=5, top_p=0.9),
            generator=torch.Generator().manual_seed(4),
            use_cache=c,
        )
        for c in (True, False)
    ]
    assert torch.equal(runs[0], runs[1])


def test_past_block_size_the_window_slides_by_half_a_block() -> None:
    counting = CountingModel(vocab_size=10, block_size=8)
    out = generate(counting, torch.tensor([[0]]), Sampling(max_new_tokens=14, temperature=0.0))
    assert out[0].tolist() == [i % 10 for i in range(15)]
    # contexts seen: 1..8, then the last 4 tokens again at positions 0.., and so on
    assert counting.lengths == [1, 2, 3, 4, 5, 6, 7, 8, 4, 5, 6, 7, 8, 4]


def test_a_cache_cannot_grow_past_block_size_or_serve_the_explicit_path(model: GPT) -> None:
    block = model.config.block_size
    cache = KVCache(model.config, 1, torch.device("cpu"), torch.float32)
    with torch.inference_mode():
        model(torch.zeros(1, block - 1, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match=f"sequence of {block + 1} tokens exceeds block_size {block}"):
            model(torch.zeros(1, 2, dtype=torch.long), cache=cache)
        cache.reset()
        with pytest.raises(ValueError, match="explicit"):
            model(torch.zeros(1, 2, dtype=torch.long), explicit=True, cache=cache)
