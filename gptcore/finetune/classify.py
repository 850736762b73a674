"""Text classification with a GPT: the pretrained network, its LM head replaced by a small
classification head that reads the hidden state of the last real token.

Why the last token: attention is causal, so only the last position has seen the whole text.
Batches are padded on the right (with <|endoftext|>); causal attention keeps padding from
reaching any real position, so no attention mask is needed, and the head reads position
`length - 1` of each row, never a pad.

    tokens ─ GPT blocks ─ ln_f ─ [last real position] ─ head: Linear(n_embd, classes) ─> logits
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gptcore.checkpoint import read_classifier_file, save_classifier
from gptcore.errors import DataError
from gptcore.model import GPT, GPTConfig
from gptcore.tokenizer import Tokenizer, tokenizer_from_dict


def last_token_states(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T, C) hidden states -> (B, C): each row's state at its last real position."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]


class Classifier(nn.Module):
    def __init__(self, backbone: GPT, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.n_embd, num_classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Class logits (B, classes) for right-padded token ids (B, T) of real lengths (B,)."""
        return self.head(last_token_states(self.backbone.hidden_states(idx), lengths))


def set_trainable(model: Classifier, train_blocks: str | int) -> int:
    """Freeze what does not train; returns the number of trainable parameters. `all`: everything;
    N > 0: the last N blocks, the final LayerNorm and the head; 0: the head alone."""
    train_all = train_blocks == "all"
    for p in model.parameters():
        p.requires_grad = train_all
    if not train_all:
        n = int(train_blocks)
        trained = [model.head] + ([model.backbone.ln_f, *model.backbone.h[-n:]] if n > 0 else [])
        for module in trained:
            for p in module.parameters():
                p.requires_grad = True
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def encode_texts(tokenizer: Tokenizer, texts: list[str], block_size: int) -> tuple[list[list[int]], int]:
    """Token ids of each text, cut to its first `block_size` tokens; and how many were cut."""
    seqs, cut = [], 0
    for encoded in tokenizer.encode_batch(texts):
        ids = encoded.tolist() or [tokenizer.eot_id]  # a text of no tokens still has a last position
        if len(ids) > block_size:
            ids, cut = ids[:block_size], cut + 1
        seqs.append(ids)
    return seqs, cut


def pad_right(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, longest) and the real lengths (B,)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    idx = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for row, s in enumerate(seqs):
        idx[row, : len(s)] = torch.tensor(s, dtype=torch.long)
    return idx, lengths


def batch_loss(
    model: Classifier, seqs: list[list[int]], labels: list[int], pad_id: int, device: torch.device
) -> torch.Tensor:
    idx, lengths = pad_right(seqs, pad_id)
    logits = model(idx.to(device), lengths.to(device))
    return F.cross_entropy(logits.float(), torch.tensor(labels, device=device))


@torch.no_grad()
def predict_proba(
    model: Classifier, seqs: list[list[int]], pad_id: int, device: torch.device, batch_size: int = 64
) -> torch.Tensor:
    """Class probabilities (N, classes), on the CPU. Rows sorted by length share a batch, so
    little time goes to padding; the result is in the order of `seqs`."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = torch.empty(len(seqs), model.head.out_features)
    for first in range(0, len(order), batch_size):
        rows = order[first : first + batch_size]
        idx, lengths = pad_right([seqs[i] for i in rows], pad_id)
        out[rows] = model(idx.to(device), lengths.to(device)).float().softmax(-1).cpu()
    return out


def classification_metrics(
    y_true: list[int], y_pred: list[int], labels: list[str], majority: int
) -> dict[str, Any]:
    """Accuracy, macro F1, per-class precision and recall, the confusion matrix (rows: actual,
    columns: predicted) and the accuracy of always answering the training majority class.
    Precision of a class never predicted, and F1 where precision + recall = 0, count as 0."""
    k = len(labels)
    matrix = [[0] * k for _ in range(k)]
    for t, p in zip(y_true, y_pred, strict=True):
        matrix[t][p] += 1
    n = len(y_true)
    per_class, f1s = {}, []
    for c, name in enumerate(labels):
        tp = matrix[c][c]
        predicted = sum(matrix[r][c] for r in range(k))
        actual = sum(matrix[c])
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        if actual:  # a class absent from this split has no recall: F1 over the classes present
            f1s.append(f1)
        per_class[name] = {"precision": round(precision, 4), "recall": round(recall, 4), "support": actual}
    return {
        "examples": n,
        "accuracy": round(sum(matrix[c][c] for c in range(k)) / n, 4) if n else 0.0,
        "macro_f1": round(sum(f1s) / len(f1s), 4) if f1s else 0.0,
        "majority_baseline_accuracy": round(sum(1 for t in y_true if t == majority) / n, 4) if n else 0.0,
        "per_class": per_class,
        "confusion": matrix,
    }


def save(
    path: Path | str, model: Classifier, tokenizer: Tokenizer, labels: list[str], meta: dict[str, Any]
) -> None:
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    state.pop("backbone.lm_head.weight", None)  # tied to the token embedding: stored once
    save_classifier(path, model.backbone.config.to_dict(), state, tokenizer.to_dict(), labels, meta)


def load(
    path: Path | str, device: torch.device | str = "cpu"
) -> tuple[Classifier, Tokenizer, list[str], dict]:
    """(classifier in eval mode, tokenizer, class labels, meta) from a classifier file."""
    payload = read_classifier_file(path)
    try:
        config = GPTConfig(**payload["config"])
    except TypeError as exc:
        raise DataError(f"{path} has an invalid model config: {exc}") from None
    labels = payload["labels"]
    model = Classifier(GPT(config), len(labels))
    state = dict(payload["state_dict"])
    state["backbone.lm_head.weight"] = state.get("backbone.wte.weight")
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError) as exc:
        raise DataError(f"{path}: weights do not match the classifier: {exc}") from None
    return model.to(device).eval(), tokenizer_from_dict(payload["tokenizer"]), labels, payload["meta"]


def classify_texts(
    model: Classifier, tokenizer: Tokenizer, texts: list[str], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Class probabilities (N, classes) for raw texts, cut to the model's context as in training."""
    seqs, _ = encode_texts(tokenizer, texts, model.backbone.config.block_size)
    return predict_proba(model, seqs, tokenizer.eot_id, torch.device(device))
