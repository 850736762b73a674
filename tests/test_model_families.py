"""The two model families (gpt2, llama) with a tied or untied head and optional QK-norm: each
variant's attention paths agree, it is causal, its KV cache reproduces the full forward, it saves
and loads, it trains and resumes bit-identically, and combinations with no transformers
counterpart are refused."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from support_models import VARIANTS, perturb_gains_and_biases
from support_train import BASE, assert_same_weights, curve, run

from gptcore.checkpoint import load_model, save_model
from gptcore.errors import DataError
from gptcore.generate import generate
from gptcore.model import GPT, GPTConfig, KVCache, apply_rotary
from gptcore.sampling import Sampling
from gptcore.tokenizer import CharTokenizer
from gptcore.train import model_config

V, T, L, H, C = 13, 16, 2, 4, 32
GREEDY_20 = Sampling(max_new_tokens=20, temperature=0.0)


def config(variant: str, **changes: object) -> GPTConfig:
    return GPTConfig(
        vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=C, **{**VARIANTS[variant], **changes}
    )


def model(variant: str, seed: int = 0, **changes: object) -> GPT:
    torch.manual_seed(seed)
    net = GPT(config(variant, **changes)).eval()
    perturb_gains_and_biases(net)
    return net


def ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(V, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    return request.param


def test_sdpa_and_explicit_attention_agree(variant: str) -> None:
    net = model(variant)
    idx = ids(3, T)
    with torch.no_grad():
        fused, _ = net(idx)
        explicit, _ = net(idx, explicit=True)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)


def test_a_later_token_never_changes_earlier_logits(variant: str) -> None:
    net = model(variant)
    idx = ids(2, T)
    with torch.no_grad():
        before, _ = net(idx)
        changed = idx.clone()
        changed[:, 9] = (changed[:, 9] + 1) % V
        after, _ = net(changed)
    torch.testing.assert_close(after[:, :9], before[:, :9], rtol=0, atol=1e-6)
    assert not torch.allclose(after[:, 9], before[:, 9])


def test_the_kv_cache_gives_the_logits_of_the_full_forward(variant: str) -> None:
    net = model(variant)
    idx = ids(2, T)
    with torch.inference_mode():
        full, _ = net(idx)
        cache = KVCache(net.config, 2, idx.device, torch.float32)
        # a prefill, single tokens, then a chunk on a non-empty cache (the masked path)
        for a, b in [(0, 5), (5, 6), (6, 7), (7, 10), (10, T)]:
            logits, _ = net(idx[:, a:b], cache=cache)
            torch.testing.assert_close(logits, full[:, a:b], rtol=1e-5, atol=1e-5)


def test_greedy_generation_with_the_cache_equals_without_it(variant: str) -> None:
    wide = model(variant).double()
    prompt = ids(2, 4)
    cached = generate(wide, prompt, GREEDY_20, use_cache=True)
    uncached = generate(wide, prompt, GREEDY_20, use_cache=False)
    assert torch.equal(cached, uncached)


def test_the_llama_family_has_rotary_positions_rmsnorm_swiglu_and_no_biases() -> None:
    net = model("llama")
    names = {name for name, _ in net.named_parameters()}
    assert not [n for n in names if n.endswith("bias")]
    assert "wpe.weight" not in names and "wpe.weight" not in net.state_dict()
    # the rotary tables are derived from the config, not weights
    assert not [k for k in net.state_dict() if "rotary" in k]
    hidden = net.config.ffn_hidden
    assert hidden % 64 == 0 and hidden >= 8 * C / 3
    assert net.h[0].mlp.c_fc.weight.shape == (2 * hidden, C)
    assert net.h[0].mlp.c_proj.weight.shape == (C, hidden)
    # position matters even with no position table: the same tokens in another order differ
    idx = ids(1, 8)
    with torch.no_grad():
        a, _ = net(idx)
        b, _ = net(idx.flip(1))
    assert not torch.allclose(a[0, -1], b[0, 0])


def test_rotary_scores_depend_only_on_the_offset_between_positions() -> None:
    rotary = GPT(config("llama")).rotary
    q, k = torch.randn(2, C // H, generator=torch.Generator().manual_seed(0))
    cos, sin = rotary(0, T)

    def score(i: int, j: int) -> float:
        qi = apply_rotary(q[None, None, None], cos[i : i + 1], sin[i : i + 1])
        kj = apply_rotary(k[None, None, None], cos[j : j + 1], sin[j : j + 1])
        return float((qi * kj).sum())

    assert score(5, 2) == pytest.approx(score(12, 9), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)
    # a rotation: lengths are kept
    rotated = apply_rotary(q[None, None, None], cos[7:8], sin[7:8])
    assert rotated.norm().item() == pytest.approx(q.norm().item(), rel=1e-6)


def test_qk_norm_adds_one_gain_per_head_dimension_for_queries_and_keys() -> None:
    plain, normed = GPT(config("llama")), GPT(config("llama", qk_norm=True))
    extra = {n: p.shape for n, p in normed.named_parameters()}.items() - {
        n: p.shape for n, p in plain.named_parameters()
    }.items()
    expected = {(f"h.{i}.attn.{w}_norm.weight", torch.Size([C // H])) for i in range(L) for w in "qk"}
    assert set(extra) == expected


def test_an_untied_head_is_its_own_matrix(variant: str) -> None:
    net = model(variant)
    tied = net.config.tie_embeddings
    assert (net.lm_head.weight is net.wte.weight) == tied
    other = model(variant, tie_embeddings=not tied)
    difference = other.num_params() - net.num_params()
    assert difference == (V * C if tied else -V * C)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arch": "mamba"}, "arch 'mamba' is not one of gpt2, llama"),
        ({"arch": "gpt2", "qk_norm": True}, "qk_norm belongs to the llama family"),
        ({"arch": "llama", "bias": True}, "the llama family has no biases"),
        ({"arch": "llama", "n_head": 32}, "rotary embeddings need an even head size, got 1"),
    ],
)
def test_combinations_without_a_transformers_counterpart_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{"vocab_size": V, "block_size": T, "n_layer": L, "n_head": H, "n_embd": C, **changes})


def test_the_model_file_round_trips_every_variant(variant: str, tmp_path: Path) -> None:
    net = model(variant)
    tok = CharTokenizer([chr(97 + i) for i in range(V - 2)])
    save_model(tmp_path / "m.pt", net, tok)
    loaded, _, _ = load_model(tmp_path / "m.pt")
    assert loaded.config == net.config
    assert (loaded.lm_head.weight is loaded.wte.weight) == net.config.tie_embeddings
    idx = ids(2, T)
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], net(idx)[0])


def test_a_gpt2_model_file_records_only_the_fields_it_always_had() -> None:
    # gpt2 files written today are byte for byte those of gptcore before the llama family
    assert set(config("gpt2").to_dict()) == {
        "vocab_size",
        "block_size",
        "n_layer",
        "n_head",
        "n_embd",
        "dropout",
        "bias",
    }
    assert config("llama").to_dict()["arch"] == "llama"
    assert config("gpt2-untied").to_dict()["tie_embeddings"] is False


def test_a_model_file_with_an_impossible_family_config_is_refused(tmp_path: Path) -> None:
    net = model("gpt2")
    tok = CharTokenizer([chr(97 + i) for i in range(V - 2)])
    object.__setattr__(net.config, "qk_norm", True)  # what a hand-edited file could hold
    save_model(tmp_path / "m.pt", net, tok)
    with pytest.raises(DataError, match=r"m\.pt has an invalid model config: qk_norm belongs"):
        load_model(tmp_path / "m.pt")


@pytest.mark.parametrize("variant", ["llama", "llama-untied", "llama-qknorm", "gpt2-untied"])
def test_every_family_trains_and_resumes_bit_identically(variant: str, stores, tmp_path: Path) -> None:
    arch = VARIANTS[variant]
    p = dataclasses.replace(
        BASE,
        arch=arch["arch"],
        tie_embeddings=arch.get("tie_embeddings", True),
        qk_norm=arch.get("qk_norm", False),
        max_iters=16,
        dropout=0.1,
        grad_accum_steps=2,
        checkpoint_interval=5,
    )
    assert model_config(p, 40).arch == arch["arch"]
    whole, whole_evals = run(p, stores)
    assert whole is not None and whole.model.config.arch == arch["arch"]
    assert whole.final_val_loss < math.log(stores[0].vocab_size)  # it learned something
    ckpt = tmp_path / "ckpt.pt"
    stopped, first = run(p, stores, ckpt, stop_at=10)
    assert stopped is None and ckpt.exists()
    resumed, rest = run(p, stores, ckpt)
    assert resumed is not None
    assert_same_weights(resumed.model, whole.model)
    assert curve(first + rest[len(first) :]) == curve(whole_evals)
