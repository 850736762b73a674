"""The classifier: last-real-token selection under padding, what trains, metrics, its file, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gptcore.checkpoint import save_model
from gptcore.cli import main as cli_main
from gptcore.errors import DataError
from gptcore.finetune import classify
from gptcore.finetune.loop import fine_tune
from gptcore.model import GPT, GPTConfig
from gptcore.params import parse_section
from gptcore.tokenizer import CharTokenizer

CHARS = list("abcdefghijklmnopqrstuvwxyz !.")


def tiny_classifier(classes: int = 3) -> tuple[classify.Classifier, CharTokenizer]:
    torch.manual_seed(0)
    tokenizer = CharTokenizer(CHARS)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16)
    return classify.Classifier(GPT(config), classes).eval(), tokenizer


def test_last_token_states_picks_each_rows_last_real_position() -> None:
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float).view(2, 4, 3)
    picked = classify.last_token_states(hidden, torch.tensor([2, 4]))
    assert torch.equal(picked, torch.stack([hidden[0, 1], hidden[1, 3]]))


def test_padding_does_not_change_a_texts_logits() -> None:
    model, _ = tiny_classifier()
    short, long = [3, 1, 4], [1, 5, 9, 2, 6, 5]
    idx, lengths = classify.pad_right([short, long], pad_id=30)
    assert idx.tolist()[0] == [3, 1, 4, 30, 30, 30] and lengths.tolist() == [3, 6]
    with torch.no_grad():
        batched = model(idx, lengths)
        alone = model(torch.tensor([short]), torch.tensor([3]))
        # the last position would read padding: a different answer from the last real one
        wrong = model(idx[:1], torch.tensor([6]))
    assert torch.allclose(batched[0], alone[0], atol=1e-6)
    assert not torch.allclose(batched[0], wrong[0], atol=1e-4)


def test_predict_proba_keeps_the_order_of_the_texts() -> None:
    model, _ = tiny_classifier()
    seqs = [[1] * 7, [2], [3, 4, 5]]
    probs = classify.predict_proba(model, seqs, 30, torch.device("cpu"), batch_size=2)
    for i, s in enumerate(seqs):
        one = model(torch.tensor([s]), torch.tensor([len(s)])).softmax(-1)[0]
        assert torch.allclose(probs[i], one, atol=1e-6)
    assert torch.allclose(probs.sum(-1), torch.ones(3))


@pytest.mark.parametrize(
    ("train_blocks", "trained"), [("all", None), (0, {"head"}), (1, {"head", "ln_f", "h.1"})]
)
def test_train_blocks_choose_what_trains(train_blocks: str | int, trained: set[str] | None) -> None:
    model, _ = tiny_classifier()
    count = classify.set_trainable(model, train_blocks)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert count == sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trained is None:
        assert names == {n for n, _ in model.named_parameters()}
        return
    expected = {
        n
        for n, _ in model.named_parameters()
        if n.startswith("head.") or any(n.startswith(f"backbone.{m}.") for m in trained - {"head"})
    }
    assert names == expected


def test_texts_longer_than_the_context_are_cut_and_counted() -> None:
    _, tokenizer = tiny_classifier()
    seqs, cut = classify.encode_texts(tokenizer, ["abc", "a" * 40, ""], 16)
    assert [len(s) for s in seqs] == [3, 16, 1] and cut == 1
    assert seqs[2] == [tokenizer.eot_id]  # an empty text still has a last position


def test_metrics_match_hand_computed_values() -> None:
    labels = ["ham", "spam", "eggs"]
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 0, 0]
    m = classify.classification_metrics(y_true, y_pred, labels, majority=0)
    assert m["confusion"] == [[2, 1, 0], [1, 1, 0], [1, 0, 0]]
    assert m["accuracy"] == round(3 / 6, 4)
    # ham: precision 2/4, recall 2/3; spam: 1/2, 1/2; eggs: never predicted -> precision 0, recall 0
    assert m["per_class"]["ham"] == {"precision": 0.5, "recall": round(2 / 3, 4), "support": 3}
    assert m["per_class"]["spam"] == {"precision": 0.5, "recall": 0.5, "support": 2}
    assert m["per_class"]["eggs"] == {"precision": 0.0, "recall": 0.0, "support": 1}
    f1_ham = 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3)
    assert m["macro_f1"] == round((f1_ham + 0.5 + 0.0) / 3, 4)
    assert m["majority_baseline_accuracy"] == 0.5


def test_fine_tuning_learns_a_separable_task() -> None:
    model, tokenizer = tiny_classifier(classes=2)
    texts = ["aaaa", "aaa a", "a aaa", "aa aa", "bbbb", "bbb b", "b bbb", "bb bb"] * 4
    labels = [0, 0, 0, 0, 1, 1, 1, 1] * 4
    seqs, _ = classify.encode_texts(tokenizer, texts, 16)
    params = parse_section(
        "classify",
        {
            "init": "pretrained",
            "train_blocks": "all",
            "epochs": 8,
            "batch_size": 8,
            "learning_rate": 3.0e-3,
            "weight_decay": 0.0,
            "grad_clip": 1.0,
            "eval_interval": 4,
            "seed": 0,
            "device": "cpu",
            "threads": 0,
            "method": "full",
            "lora_rank": 8,
            "lora_alpha": 16,
            "lora_dropout": 0.0,
            "lora_targets": ["c_attn"],
            "lora_init": None,
        },
    )
    device = torch.device("cpu")
    pad = tokenizer.eot_id

    def accuracy() -> dict[str, float]:
        probs = classify.predict_proba(model, seqs, pad, device)
        return {"accuracy": (probs.argmax(-1) == torch.tensor(labels)).float().mean().item()}

    def loss_on(batch: list[int]) -> torch.Tensor:
        return classify.batch_loss(model, [seqs[i] for i in batch], [labels[i] for i in batch], pad, device)

    result = fine_tune(model, params, len(seqs), loss_on, accuracy, device)
    assert result.steps == 8 * 4 and result.examples == 8 * 32
    assert [h["step"] for h in result.history] == [0, 4, 8, 12, 16, 20, 24, 28, 32]
    assert result.history[-1]["accuracy"] == 1.0
    assert result.history[-1]["train/loss"] < result.history[1]["train/loss"]


def test_classifier_file_round_trip_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, tokenizer = tiny_classifier(classes=2)
    path = tmp_path / "classifier.pt"
    classify.save(path, model, tokenizer, ["ham", "spam"], {"steps": 3})
    loaded, tok, labels, meta = classify.load(path)
    assert labels == ["ham", "spam"] and meta == {"steps": 3} and tok.identity == tokenizer.identity
    texts = ["free prize now!", "see you at noon."]
    expected = classify.classify_texts(model, tokenizer, texts)
    assert torch.allclose(classify.classify_texts(loaded, tok, texts), expected)

    cli_main(["classify", "--model", str(path), "--device", "cpu", texts[0]])
    out = capsys.readouterr().out.splitlines()
    probs = dict(zip(labels, expected[0].tolist(), strict=True))
    assert out[0] == max(probs, key=probs.get)
    assert sorted(out[1:]) == sorted(f"  {label}: {p:.4f}" for label, p in probs.items())


def test_a_language_model_file_is_not_a_classifier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, tokenizer = tiny_classifier()
    path = tmp_path / "model.pt"
    save_model(path, model.backbone, tokenizer)
    with pytest.raises(DataError, match=r"is not a gptcore classifier file"):
        classify.load(path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["classify", "--model", str(path), "hello"])
    assert exit_info.value.code == 1
    assert "is not a gptcore classifier file" in capsys.readouterr().err
