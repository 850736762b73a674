"""Stage sample: complete each of sample.prompts with the trained model and write reports/samples.md."""

from __future__ import annotations

import re
from pathlib import Path

from gptcore.atomic import write_text
from gptcore.checkpoint import MODEL_FILE, load_model
from gptcore.errors import run_main
from gptcore.generate import complete, seeded_generator
from gptcore.params import load_section

SAMPLES_FILE = Path("reports/samples.md")


def _backticks(text: str, minimum: int) -> str:
    """A backtick run longer than any in `text` (at least `minimum`), so the text cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(minimum, longest + 1)


def main() -> None:
    params = load_section("sample")
    # sampled on the CPU, whatever trained the model: the report then depends only on the model
    # file and the params, not on which machine runs the stage
    model, tokenizer, meta = load_model(MODEL_FILE, "cpu")
    sampling = params.sampling()
    settings = {k: v for k, v in sorted(meta.items()) if isinstance(v, (int, float, str, bool))}
    settings.update(
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        max_new_tokens=sampling.max_new_tokens,
        seed=f"{sampling.seed} (reseeded for each prompt)",
        stop=repr(list(sampling.stop)),
    )
    lines = ["# Samples", "", f"Completions by `{MODEL_FILE}`.", "", "| setting | value |", "|---|---|"]
    lines += ["| {} | {} |".format(key, str(value).replace("|", "\\|")) for key, value in settings.items()]
    for number, prompt in enumerate(params.prompts, start=1):
        # one seed per prompt: a prompt's completion does not change when other prompts are added
        text = prompt + complete(model, tokenizer, prompt, sampling, generator=seeded_generator(sampling))
        span, fence = _backticks(prompt, 1), _backticks(text, 3)
        pad = " " if prompt[:1] == "`" or prompt[-1:] == "`" else ""  # CommonMark strips one space each side
        lines += ["", f"## Prompt {number}", "", f"Prompt: {span}{pad}{prompt}{pad}{span}", ""]
        lines += [fence, text.rstrip("\n"), fence]
    write_text(SAMPLES_FILE, "\n".join(lines) + "\n")
    print(f"sample: {len(params.prompts)} completions -> {SAMPLES_FILE}")


if __name__ == "__main__":
    run_main(main)
