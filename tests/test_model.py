"""Tests of gptcore.model: shapes, causality, the two attention paths, weight tying, init, FLOPs."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from gptcore.model import GPT, GPTConfig, KVCache, flops_per_token

SMALL = GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=4, n_embd=32)


def make_model(config: GPTConfig = SMALL, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(config)


def tokens(batch: int, length: int, vocab: int = SMALL.vocab_size, seed: int = 1) -> torch.Tensor:
    return torch.randint(vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_logits_have_shape_batch_time_vocab_and_loss_is_a_scalar() -> None:
    model = make_model()
    idx = tokens(3, 7)
    logits, loss = model(idx)
    assert logits.shape == (3, 7, SMALL.vocab_size)
    assert loss is None
    logits, loss = model(idx, targets=tokens(3, 7, seed=2))
    assert logits.shape == (3, 7, SMALL.vocab_size)
    assert loss is not None and loss.shape == () and math.isfinite(loss.item())


def test_fresh_model_predicts_near_uniform_loss() -> None:
    # with N(0, 0.02) weights the logits are close to zero: the loss starts near ln(vocab)
    model = make_model().eval()
    _, loss = model(tokens(8, 16), targets=tokens(8, 16, seed=2))
    assert loss.item() == pytest.approx(math.log(SMALL.vocab_size), abs=0.1)


@pytest.mark.parametrize("explicit", [False, True], ids=["sdpa", "explicit"])
def test_changing_a_later_token_never_changes_earlier_logits(explicit: bool) -> None:
    model = make_model().eval()
    idx = tokens(2, SMALL.block_size)
    with torch.no_grad():
        before, _ = model(idx, explicit=explicit)
        for t in (0, 5, SMALL.block_size - 1):
            changed = idx.clone()
            changed[:, t] = (changed[:, t] + 1) % SMALL.vocab_size
            after, _ = model(changed, explicit=explicit)
            torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=1e-6)
            # the changed position itself does see the new token, so the check has teeth
            assert not torch.allclose(after[:, t], before[:, t])


def test_sdpa_path_equals_explicit_path() -> None:
    model = make_model().eval()
    idx = tokens(3, SMALL.block_size)
    with torch.no_grad():
        fused, _ = model(idx)
        explicit, _ = model(idx, explicit=True)
    assert fused.dtype == explicit.dtype == torch.float32
    assert torch.allclose(fused, explicit, rtol=1e-5, atol=1e-5)


FAMILIES = {
    "gpt2": SMALL,
    "llama, qk_norm, untied": dataclasses.replace(SMALL, arch="llama", qk_norm=True, tie_embeddings=False),
}


@pytest.mark.parametrize("config", FAMILIES.values(), ids=FAMILIES)
def test_model_attention_explicit_trains_like_the_fused_kernel(config: GPTConfig) -> None:
    """`model.attention = "explicit"` (what train.attention picks) gives the fused kernel's loss and
    gradients: in fp32 to rounding, under bf16 autocast to bf16's precision."""
    idx, targets = tokens(4, SMALL.block_size), tokens(4, SMALL.block_size, seed=2)

    def loss_and_grads(attention: str, dtype: torch.dtype | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model = make_model(config)
        model.attention = attention
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            _, loss = model(idx, targets)
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters()]

    for dtype, tol in ((None, 1e-5), (torch.bfloat16, 3e-2)):
        fused_loss, fused_grads = loss_and_grads("sdpa", dtype)
        loss, grads = loss_and_grads("explicit", dtype)
        torch.testing.assert_close(loss, fused_loss, rtol=tol, atol=tol)
        for g, f in zip(grads, fused_grads, strict=True):
            # gradients as a whole: bf16 rounds single entries of near-zero gradients freely
            assert (g - f).norm() <= tol * f.norm() + 1e-6
    # the explicit kernel is really in use: its forward differs from the fused one in the last bits
    model = make_model(config).eval()
    with torch.no_grad():
        fused, _ = model(idx)
        model.attention = "explicit"
        written_out, _ = model(idx)
        assert torch.equal(written_out, model(idx, explicit=True)[0])
    assert not torch.equal(fused, written_out)


def test_a_kv_cache_uses_the_fused_kernel_whatever_model_attention_says() -> None:
    model = make_model().eval()
    idx = tokens(1, 8)
    with torch.no_grad():
        whole, _ = model(idx)
        model.attention = "explicit"
        cache = KVCache(SMALL, 1, torch.device("cpu"), torch.float32)
        cached, _ = model(idx, cache=cache)
    torch.testing.assert_close(cached, whole, rtol=1e-5, atol=1e-5)


def test_explicit_attention_weights_are_lower_triangular_and_rows_sum_to_one() -> None:
    model = make_model().eval()
    attn = model.h[0].attn
    x = torch.randn(2, 9, SMALL.n_embd, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out, weights = attn.forward_explicit(x)
        fused = attn(x)
    assert out.shape == x.shape
    assert weights.shape == (2, SMALL.n_head, 9, 9)
    assert torch.equal(weights.triu(diagonal=1), torch.zeros_like(weights))
    assert (weights.tril() > 0).sum() == 2 * SMALL.n_head * (9 * 10 // 2)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, SMALL.n_head, 9))
    # the first position can only attend to itself
    assert torch.equal(weights[..., 0, 0], torch.ones(2, SMALL.n_head))
    torch.testing.assert_close(out, fused, rtol=1e-5, atol=1e-5)


def test_output_head_is_tied_to_token_embedding() -> None:
    model = make_model()
    assert model.lm_head.weight is model.wte.weight
    # stored once: the parameter list does not count the shared matrix twice
    assert sum(p is model.wte.weight for p in model.parameters()) == 1
    with torch.no_grad():
        model.wte.weight[3].fill_(0.5)
    assert torch.equal(model.lm_head.weight[3], torch.full((SMALL.n_embd,), 0.5))


def test_gpt2_init_scales_residual_projections_by_depth() -> None:
    # wide enough that each std estimate rests on >= 65k samples (relative error ~0.3%)
    config = GPTConfig(vocab_size=512, block_size=128, n_layer=8, n_head=4, n_embd=256, bias=True)
    model = make_model(config)
    residual_std = 0.02 / math.sqrt(2 * config.n_layer)
    for block in model.h:
        assert block.attn.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.03)
        assert block.mlp.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.03)
        assert block.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.03)
        assert block.mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.03)
        for linear in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
            assert linear.weight.mean().abs().item() < 0.002
            assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
        for norm in (block.ln_1, block.ln_2):
            assert torch.equal(norm.weight, torch.ones_like(norm.weight))
            assert torch.equal(norm.bias, torch.zeros_like(norm.bias))
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert model.wpe.weight.std().item() == pytest.approx(0.02, rel=0.03)


def test_bias_false_leaves_no_bias_parameters() -> None:
    model = make_model(GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16, bias=False))
    names = [name for name, _ in model.named_parameters()]
    assert not [name for name in names if name.endswith("bias")]
    assert all(p.dim() >= 1 for p in model.parameters())


def test_bias_true_adds_a_bias_to_every_linear_and_layernorm_except_the_head() -> None:
    config = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16, bias=True)
    model = make_model(config)
    biases = {name for name, _ in model.named_parameters() if name.endswith("bias")}
    per_block = ["ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"]
    expected = {f"h.{i}.{m}.bias" for i in range(config.n_layer) for m in per_block} | {"ln_f.bias"}
    assert biases == expected
    assert model.lm_head.bias is None
    without = make_model(GPTConfig(**{**config.to_dict(), "bias": False}))
    # 4 Linear biases (3C + C + 4C + C) and 2 LayerNorm biases (C each) per block, plus ln_f's
    extra = config.n_layer * (3 + 1 + 4 + 1 + 2) * config.n_embd + config.n_embd
    assert model.num_params() - without.num_params() == extra


@pytest.mark.parametrize("explicit", [False, True], ids=["sdpa", "explicit"])
def test_dropout_is_active_in_train_mode_and_off_in_eval_mode(explicit: bool) -> None:
    config = GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.3)
    model = make_model(config)
    idx = tokens(2, 16)
    with torch.no_grad():
        model.train()
        a, _ = model(idx, explicit=explicit)
        b, _ = model(idx, explicit=explicit)
        assert not torch.allclose(a, b)
        model.eval()
        c, _ = model(idx, explicit=explicit)
        d, _ = model(idx, explicit=explicit)
    assert torch.equal(c, d)
    # with dropout 0 the train-mode output is the eval-mode output
    no_dropout = make_model(GPTConfig(**{**config.to_dict(), "dropout": 0.0})).train()
    with torch.no_grad():
        e, _ = no_dropout(idx, explicit=explicit)
    torch.testing.assert_close(e, c, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "family", [{}, {"arch": "llama"}, {"arch": "llama", "qk_norm": True}], ids=["gpt2", "llama", "qk_norm"]
)
def test_rows_stepped_together_at_their_own_positions_equal_each_row_alone(family: dict) -> None:
    # what the serving engine does: prompts of different lengths cached in rows of one cache, then
    # one new token per row in one forward pass, each at its own position (learned or rotary)
    config = dataclasses.replace(SMALL, **family)
    model = make_model(config).eval()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]
    new = torch.tensor([[12], [0], [5]])
    cache = KVCache(config, len(prompts), torch.device("cpu"), torch.float32)
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            model(torch.tensor([prompt]), cache=cache.rows(i, i + 1))
        positions = torch.tensor([len(p) for p in prompts])
        together, _ = model(new, cache=cache.rows(0, len(prompts)), positions=positions)
        for i, prompt in enumerate(prompts):
            alone, _ = model(torch.tensor([prompt + [int(new[i])]]))
            torch.testing.assert_close(together[i, -1], alone[0, -1], rtol=1e-4, atol=1e-5)


def test_sequence_longer_than_block_size_raises() -> None:
    model = make_model()
    model(tokens(1, SMALL.block_size))  # exactly block_size is fine
    with pytest.raises(ValueError, match=r"17 tokens exceeds block_size 16"):
        model(tokens(1, SMALL.block_size + 1))


def test_flops_per_token_matches_the_formula_by_hand() -> None:
    config = GPTConfig(vocab_size=10, block_size=8, n_layer=2, n_head=2, n_embd=8)
    model = make_model(config)
    C, V, L = 8, 10, 2
    # non-embedding parameters: the (tied) token table, per block ln_1 + c_attn + c_proj + ln_2 +
    # c_fc + c_proj, and ln_f; the position table is left out
    per_block = C + C * 3 * C + C * C + C + C * 4 * C + 4 * C * C
    n = V * C + L * per_block + C
    assert n == 80 + 2 * 784 + 8
    assert model.num_params() == n
    assert model.num_params(non_embedding=False) == n + 8 * C
    # 6N for the matmuls forward and backward, plus 12 * L * H * Q * T for attention (Q = C / H)
    expected = 6 * n + 12 * L * 2 * (C // 2) * 8
    assert flops_per_token(config, n) == expected == 6 * 1656 + 1536
    assert flops_per_token(config, n, training=False) == expected // 3


def test_tiny_model_overfits_one_batch() -> None:
    config = GPTConfig(vocab_size=16, block_size=16, n_layer=1, n_head=2, n_embd=32)
    model = make_model(config).train()
    x = tokens(4, 16, vocab=16, seed=5)
    y = tokens(4, 16, vocab=16, seed=6)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    _, first = model(x, y)
    assert first.item() == pytest.approx(math.log(16), abs=0.3)
    for _ in range(300):
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if loss.item() < 0.05:
            break
    model.eval()
    with torch.no_grad():
        _, final = model(x, y)
    assert final.item() < 0.1


@pytest.mark.parametrize("config", FAMILIES.values(), ids=FAMILIES)
def test_sequences_packed_in_one_row_compute_what_each_computes_alone(config: GPTConfig) -> None:
    """packed_hidden_states: two sequences and a stray token share a row, each at its own
    positions and seeing only its own earlier tokens; each gets the hidden states of its own
    forward pass, and the position past the block is refused."""
    model = make_model(config).eval()
    a, b = tokens(1, 7, seed=4)[0], tokens(1, 5, seed=5)[0]
    idx = torch.cat([a, b, torch.tensor([3])])[None]
    positions = torch.tensor([[*range(7), *range(5), 0]])
    sequence = torch.tensor([[0] * 7 + [1] * 5 + [2]])
    allowed = (sequence[:, :, None] == sequence[:, None, :]) & (
        positions[:, None, :] <= positions[:, :, None]
    )
    with torch.no_grad():
        packed = model.packed_hidden_states(idx, positions, allowed)[0]
        alone = [model.hidden_states(s[None])[0] for s in (a, b, torch.tensor([3]))]
    torch.testing.assert_close(packed, torch.cat(alone), rtol=1e-5, atol=1e-5)
    # seeing the other sequence would change the answer: the mask is what keeps them apart
    with torch.no_grad():
        leaky = model.packed_hidden_states(idx, positions, torch.ones_like(allowed).tril())[0]
    assert not torch.allclose(leaky[7:12], alone[1], atol=1e-3)
    with pytest.raises(ValueError, match="exceeds block_size"):
        model.packed_hidden_states(idx, torch.full_like(positions, SMALL.block_size), allowed)


@pytest.mark.slow
def test_meta_device_builds_every_family_shape_for_shape_and_loads_no_compiler() -> None:
    # a fresh process: whether torch._dynamo is imported is a property of the whole process
    script = """
import sys, torch
from gptcore.model import GPT, GPTConfig, meta_device
for arch, qk_norm in (("gpt2", False), ("llama", False), ("llama", True)):
    config = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, arch=arch, qk_norm=qk_norm)
    with meta_device():
        shapes = GPT(config)
    real = GPT(config)
    assert all(t.is_meta for t in [*shapes.parameters(), *shapes.buffers()])
    for got, want in ((shapes.state_dict(), real.state_dict()), (dict(shapes.named_buffers()), dict(real.named_buffers()))):
        assert {k: (v.shape, v.dtype) for k, v in got.items()} == {k: (v.shape, v.dtype) for k, v in want.items()}
    assert shapes.num_params() == real.num_params()
with meta_device():  # any other op still runs on the meta device
    assert torch.empty(3, 4).normal_().is_meta and torch.zeros(2).is_meta
print("torch._dynamo" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    # the meta kernels of normal_ and of the rotary tables' arithmetic would import it
    assert done.stdout.strip() == "False"
