"""Stage classify: fine-tune a classifier on data/finetune/classify/ from models/model.pt.

The pretrained network (or, with classify.init = random, the same network freshly initialised)
gets a classification head on its last real token; classify.train_blocks says what trains.
Writes models/classifier.pt; reports/classify.json (accuracy, macro F1, per-class precision and
recall, the majority-class baseline, on val and test); the test confusion matrix as rows for
DVC's confusion template and as a PNG; step-wise losses and accuracy with DVCLive. Wall seconds and
examples/s go to reports/telemetry/classify.json (and .tsv), which are not outputs, so that the
same inputs give the same outputs and dvc.lock. With classify.method: lora the backbone stays
frozen and adapters in its last train_blocks blocks train with the head (gptcore.finetune.lora):
models/classifier_adapter holds them and the head alone, models/classifier.pt the classifier with
them merged; with full that folder is empty.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from gptcore.atomic import write_json
from gptcore.checkpoint import MODEL_FILE, load_model
from gptcore.device import resolve_device
from gptcore.errors import run_main
from gptcore.finetune import classify, lora
from gptcore.finetune.data import read_jsonl
from gptcore.finetune.loop import fine_tune, set_threads
from gptcore.model import GPT
from gptcore.params import load_section
from gptcore.reports import Telemetry, headline, live_logger, plot_confusion

DATA_DIR = Path("data/finetune/classify")
MODEL = Path("models/classifier.pt")
ADAPTER = Path("models/classifier_adapter")
LIVE_DIR = "dvclive/classify"
REPORT = Path("reports/classify.json")
# what `dvc metrics show` lists; the report holds the rest (per-class figures, counts)
METRICS = Path("reports/classify_metrics.json")
HEADLINE = ("test.accuracy", "test.macro_f1", "val.accuracy", "val.macro_f1", "steps")
# what the run measured of itself: `dvc metrics show reports/telemetry/classify.json`
TELEMETRY = Path("reports/telemetry/classify.json")
CONFUSION = Path("reports/classify_confusion.json")
CONFUSION_PNG = Path("reports/classify_confusion.png")


def main() -> None:
    params = load_section("classify")
    set_threads(params.threads)
    device = resolve_device(params.device)
    rows = {split: read_jsonl(DATA_DIR / f"{split}.jsonl") for split in ("train", "val", "test")}
    labels = sorted({row["label"] for row in rows["train"]})
    index = {label: i for i, label in enumerate(labels)}
    pretrained, tokenizer, _ = load_model(MODEL_FILE, "cpu")
    torch.manual_seed(params.seed)
    backbone = pretrained if params.init == "pretrained" else GPT(pretrained.config)
    model = classify.Classifier(backbone, len(labels)).to(device)
    tuner = None
    if params.method == "lora":  # after the head, whose initial weights stay those of full fine-tuning
        base = lora.Base.of(backbone, MODEL_FILE)
        tuner, settings, adapter = lora.adapt(backbone, params, "classify", base, params.train_blocks)
        if adapter is not None:
            lora.load_head(model.head, adapter, labels)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    else:
        trainable = classify.set_trainable(model, params.train_blocks)
    block, pad = backbone.config.block_size, tokenizer.eot_id

    seqs, truncated, y = {}, {}, {}
    for split, items in rows.items():
        seqs[split], truncated[split] = classify.encode_texts(tokenizer, [r["text"] for r in items], block)
        y[split] = [index[r["label"]] for r in items]
    majority = Counter(y["train"]).most_common(1)[0][0]

    def evaluate() -> dict[str, float]:
        if not seqs["val"]:
            return {}
        probs = classify.predict_proba(model, seqs["val"], pad, device)
        target = torch.tensor(y["val"])
        loss = -probs[torch.arange(len(target)), target].clamp_min(1e-12).log().mean().item()
        return {"val/loss": loss, "val/accuracy": (probs.argmax(-1) == target).float().mean().item()}

    def loss_on(batch: list[int]) -> torch.Tensor:
        return classify.batch_loss(
            model, [seqs["train"][i] for i in batch], [y["train"][i] for i in batch], pad, device
        )

    telemetry = Telemetry(TELEMETRY)
    with live_logger(LIVE_DIR, telemetry) as log:
        result = fine_tune(
            model, params, len(seqs["train"]), loss_on, evaluate, device, on_eval=log, progress=True
        )
    if tuner is not None:
        extra = {"labels": labels}
        lora.save_adapter(ADAPTER, backbone, base, settings, "classify", head=model.head, extra=extra)
        lora.merge(tuner)  # in place: model.backbone is the merged network
    else:
        lora.save_no_adapter(ADAPTER)

    report = {
        "labels": labels,
        "init": params.init,
        "train_blocks": params.train_blocks,
        "method": params.method,
    }
    confusion = {}
    for split in ("val", "test"):
        if seqs[split]:
            predicted = classify.predict_proba(model, seqs[split], pad, device).argmax(-1).tolist()
            report[split] = classify.classification_metrics(y[split], predicted, labels, majority)
            confusion[split] = report[split].pop("confusion")  # a table, not a metric: in its own files
    report.update(
        train_examples=len(seqs["train"]),
        truncated_examples=sum(truncated.values()),
        trainable_parameters=trainable,
        steps=result.steps,
    )
    classify.save(
        MODEL,
        model,
        tokenizer,
        labels,
        meta={"init": params.init, "steps": result.steps, "source": str(MODEL_FILE)},
    )
    matrix = confusion.get("test", [[0] * len(labels) for _ in labels])
    write_json(
        CONFUSION,
        {
            "test": [
                {"actual": labels[a], "predicted": labels[p]}
                for a, row in enumerate(matrix)
                for p, count in enumerate(row)
                for _ in range(count)
            ]
        },
    )
    plot_confusion(matrix, labels, CONFUSION_PNG, title="Test confusion matrix")
    write_json(REPORT, report)
    write_json(METRICS, headline(report, HEADLINE))
    telemetry.write(
        {
            "steps": result.steps,
            "examples": result.examples,
            "wall_seconds": round(result.wall_seconds, 1),
            "examples_per_second": round(result.examples / result.wall_seconds, 1),
        }
    )
    summary = f"classify: {result.steps} steps in {result.wall_seconds:.1f} s"
    if "test" in report:
        t = report["test"]
        summary += f"; test accuracy {t['accuracy']:.3f} (majority class {t['majority_baseline_accuracy']:.3f}), macro F1 {t['macro_f1']:.3f}"
    print(summary)


if __name__ == "__main__":
    run_main(main)
