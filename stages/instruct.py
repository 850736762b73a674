"""Stage instruct: instruction fine-tuning of models/model.pt on data/finetune/instruct/.

Each record is rendered with the prompt template (instruct.template), the prompt and padding
masked from the loss unless instruct.mask_prompt is false. Writes models/instruct.pt (a model file
whose meta holds the template, so `gptcore chat --model models/instruct.pt` uses it);
reports/instruct.json (response-only loss on the held-out test records for the base model and the
fine-tuned one, records truncated or dropped); reports/instruct_samples.md (the fine-tuned
model's answers to held-out instructions beside the reference answers). Wall seconds and
examples/s go to reports/telemetry/instruct.json (and .tsv), which are not outputs, so that the
same inputs give the same outputs and dvc.lock. With instruct.method: lora only adapters train
(gptcore.finetune.lora): models/instruct_adapter holds them alone, as a peft adapter folder, and
models/instruct.pt the model with them merged; with full that folder is empty.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gptcore.atomic import write_json, write_text
from gptcore.checkpoint import MODEL_FILE, load_model, save_model
from gptcore.device import resolve_device
from gptcore.errors import DataError, run_main
from gptcore.finetune import instruct, lora
from gptcore.finetune.data import InstructionRecord, read_jsonl
from gptcore.finetune.loop import fine_tune, set_threads
from gptcore.params import load_section
from gptcore.reports import Telemetry, headline, live_logger

DATA_DIR = Path("data/finetune/instruct")
MODEL = Path("models/instruct.pt")
ADAPTER = Path("models/instruct_adapter")
LIVE_DIR = "dvclive/instruct"
REPORT = Path("reports/instruct.json")
# what `dvc metrics show` lists; the report holds the rest (record counts, the template)
METRICS = Path("reports/instruct_metrics.json")
HEADLINE = ("base_test_response_loss", "test_response_loss", "steps")
# what the run measured of itself: `dvc metrics show reports/telemetry/instruct.json`
TELEMETRY = Path("reports/telemetry/instruct.json")
SAMPLES = Path("reports/instruct_samples.md")


def samples_markdown(records: list[InstructionRecord], answers: list[str], template_name: str) -> str:
    lines = [
        "# Instruction samples",
        "",
        f"Greedy answers of `{MODEL}` ({template_name} template) to held-out test records.",
        "",
    ]
    for n, (record, reply) in enumerate(zip(records, answers, strict=True), start=1):
        lines += [f"## {n}. {record.instruction}", ""]
        if record.input:
            lines += ["Input:", "", *(f"> {line}" for line in record.input.splitlines()), ""]
        lines += ["Reference:", "", *(f"> {line}" for line in record.output.splitlines()), ""]
        lines += ["Model:", "", *(f"> {line}" for line in (reply.strip() or "(empty)").splitlines()), ""]
    return "\n".join(lines)


def main() -> None:
    params = load_section("instruct")
    set_threads(params.threads)
    device = resolve_device(params.device)
    template = instruct.TEMPLATES[params.template]
    records = {
        split: [InstructionRecord(**row) for row in read_jsonl(DATA_DIR / f"{split}.jsonl")]
        for split in ("train", "val", "test")
    }
    model, tokenizer, _ = load_model(MODEL_FILE, device)
    block, pad = model.config.block_size, tokenizer.eot_id
    encoded = {
        split: instruct.encode_records(tokenizer, template, items, block, params.mask_prompt, params.overlong)
        for split, items in records.items()
    }
    # held-out records are scored on the response alone, whatever the training loss covers
    scored = {
        split: instruct.response_targets(encoded[split], records[split], tokenizer, template)
        for split in ("val", "test")
    }

    def response_loss(split: str) -> float:
        return instruct.masked_loss(model, encoded[split].inputs, scored[split], pad, device)[0]

    for split in ("train", "test"):
        if not encoded[split].inputs:
            raise DataError(
                f"{DATA_DIR / split}.jsonl: none of its {len(records[split])} records fits the context of "
                f"{block} tokens ({encoded[split].dropped} dropped); use shorter records or a shorter "
                "instruct.template (phi3)"
            )
    torch.manual_seed(params.seed)
    tuner = None
    if params.method == "lora":  # adapters first: a target or lora_init they refuse stops the stage now
        base = lora.Base.of(model, MODEL_FILE)
        tuner, settings, _ = lora.adapt(model, params, "instruct", base)
        tuner.disable_adapter_layers()  # the base model's loss, as full fine-tuning measures it
    base_test_loss = response_loss("test")
    if tuner is not None:
        tuner.enable_adapter_layers()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    train = encoded["train"]

    def loss_on(batch: list[int]) -> torch.Tensor:
        return instruct.batch_loss(
            model, [train.inputs[i] for i in batch], [train.targets[i] for i in batch], pad, device
        )

    def evaluate() -> dict[str, float]:
        return {"val/loss": response_loss("val")} if encoded["val"].inputs else {}

    if tuner is None:
        torch.manual_seed(params.seed)  # what full fine-tuning always drew first: its results stay
    telemetry = Telemetry(TELEMETRY)
    with live_logger(LIVE_DIR, telemetry) as log:
        result = fine_tune(
            model, params, len(train.inputs), loss_on, evaluate, device, on_eval=log, progress=True
        )
    if tuner is not None:
        meta = {"template": template.to_dict()}
        lora.save_adapter(ADAPTER, model, base, settings, "instruct", extra=meta)
        model = lora.merge(tuner)
    else:
        lora.save_no_adapter(ADAPTER)

    test_loss, test_tokens = instruct.masked_loss(model, encoded["test"].inputs, scored["test"], pad, device)
    save_model(MODEL, model, tokenizer, meta={"steps": result.steps, "template": template.to_dict()})
    held_out = records["test"][: params.samples]
    answers = [
        instruct.answer(model, tokenizer, template, r.instruction, r.input, params.max_new_tokens)
        for r in held_out
    ]
    write_text(SAMPLES, samples_markdown(held_out, answers, template.name))
    report = {
        "template": template.name,
        "mask_prompt": params.mask_prompt,
        "method": params.method,
        "trainable_parameters": trainable,
        "base_test_response_loss": round(base_test_loss, 4),
        "test_response_loss": round(test_loss, 4),
        "test_response_tokens": test_tokens,
        **{f"{split}_records": len(encoded[split].inputs) for split in records},
        "truncated_records": sum(e.truncated for e in encoded.values()),
        "dropped_records": sum(e.dropped for e in encoded.values()),
        "steps": result.steps,
    }
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
    print(
        f"instruct: {result.steps} steps in {result.wall_seconds:.1f} s; test response loss "
        f"{base_test_loss:.3f} (base) -> {test_loss:.3f} (fine-tuned); "
        f"{report['truncated_records']} records truncated, {report['dropped_records']} dropped"
    )


if __name__ == "__main__":
    run_main(main)
