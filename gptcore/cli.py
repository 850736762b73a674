"""The `gptcore` command: `chat` with a trained model, `sample` completions, `info` on a model's size.

Sampling options default to the `sample` section of params.yaml when the file is there (the same
settings the sample stage records, so `gptcore sample` reproduces reports/samples.md); outside a
gptcore checkout they default to plain sampling: temperature 1, no top-k or top-p, a random seed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from gptcore.checkpoint import load_model
from gptcore.errors import DataError, GptcoreError, run_main
from gptcore.generate import complete_batch, stream_completion
from gptcore.memory import human_bytes
from gptcore.model import GPT, flops_per_token
from gptcore.params import SampleParams, TrainParams, load_section
from gptcore.tokenizer import Tokenizer, load_tokenizer
from gptcore.train import memory_plan, model_config, resolve_device

DEFAULT_MODEL = Path("models/model.pt")
DEFAULT_PARAMS = Path("params.yaml")
VOCAB_DIR = Path("data/vocab")
# Tokens given to a model whose vocabulary is not built yet: a byte-level alphabet, the size of
# a char vocabulary of a mostly-ASCII corpus rounded up; only the embedding rows depend on it.
PLACEHOLDER_VOCAB_SIZE = 256
# Used when neither a flag nor params.yaml gives it.
FALLBACK_MAX_NEW_TOKENS = 200


# ---------------------------------------------------------------------------------------------
# arguments


def _typed(
    convert: Callable[[str], float], ok: Callable[[float], bool], allowed: str
) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}")
        return value

    return parse


def _device(text: str) -> str:
    if text in ("auto", "cpu", "cuda", "mps") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not one of auto, cpu, cuda, cuda:N, mps")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptcore", description="Chat with, sample from and size up gptcore models."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{chat,sample,info}")

    sampling = argparse.ArgumentParser(add_help=False)
    sampling.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="model file (default: %(default)s)"
    )
    sampling.add_argument(
        "--params",
        type=Path,
        help=f"params file whose sample section gives the defaults (default: {DEFAULT_PARAMS} if it exists)",
    )
    sampling.add_argument(
        "--temperature",
        type=_typed(float, lambda v: v >= 0.0, "a number >= 0"),
        help="softmax temperature; 0 is greedy (default: sample.temperature, else 1.0)",
    )
    sampling.add_argument(
        "--top-k",
        type=_typed(int, lambda v: v >= 0, "an integer >= 0"),
        help="keep the k most likely tokens; 0 is off (default: sample.top_k, else 0)",
    )
    sampling.add_argument(
        "--top-p",
        type=_typed(float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]"),
        help="keep the smallest set of tokens whose probability reaches p; 1 is off (default: sample.top_p, else 1.0)",
    )
    sampling.add_argument(
        "--max-new-tokens",
        type=_typed(int, lambda v: v > 0, "an integer > 0"),
        help=f"tokens generated per completion (default: sample.max_new_tokens, else {FALLBACK_MAX_NEW_TOKENS})",
    )
    sampling.add_argument("--seed", type=int, help="seeds sampling (default: sample.seed, else random)")
    sampling.add_argument(
        "--stop",
        action="append",
        type=_typed(str, lambda v: v != "", "a non-empty string"),
        metavar="TEXT",
        help="end a completion just before this text; repeat for several (default: sample.stop)",
    )
    sampling.add_argument(
        "--device",
        type=_device,
        default="auto",
        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps",
    )

    chat = commands.add_parser(
        "chat", parents=[sampling], help="continue each line you type (or pipe in) with the model"
    )
    chat.set_defaults(run=cmd_chat)

    sample = commands.add_parser("sample", parents=[sampling], help="print completions of prompts")
    sample.add_argument(
        "--prompt",
        action="append",
        dest="prompts",
        metavar="TEXT",
        help="prompt to complete; repeat for several (default: sample.prompts)",
    )
    sample.add_argument(
        "--num-samples",
        type=_typed(int, lambda v: v > 0, "an integer > 0"),
        default=1,
        help="completions per prompt (default: %(default)s)",
    )
    sample.set_defaults(run=cmd_sample)

    info = commands.add_parser(
        "info", help="parameters, FLOPs and memory of a model or of params.yaml's train section"
    )
    info.add_argument("--model", type=Path, help=f"model file (default: {DEFAULT_MODEL} if it exists)")
    info.add_argument("--params", type=Path, help=f"params file (default: {DEFAULT_PARAMS} if it exists)")
    info.set_defaults(run=cmd_info)
    return parser


@dataclass(frozen=True)
class Sampling:
    """The resolved sampling settings of one command run."""

    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int | None  # None: draw a fresh random seed
    stop: tuple[str, ...] = ()

    def controls(self) -> dict[str, Any]:
        """The keyword arguments the gptcore.generate completions take from these settings."""
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p, "stop": self.stop}

    def describe(self) -> str:
        stop = f", stop {list(self.stop)!r}" if self.stop else ""
        return (
            f"temperature {self.temperature:g}, top_k {self.top_k}, top_p {self.top_p:g}, "
            f"max_new_tokens {self.max_new_tokens}, seed {self.seed}{stop}"
        )


def _params_file(args: argparse.Namespace) -> Path | None:
    """--params when given (it must exist), else params.yaml when the current folder has one."""
    if args.params is not None:
        return args.params
    return DEFAULT_PARAMS if DEFAULT_PARAMS.is_file() else None


def resolve_sampling(args: argparse.Namespace) -> tuple[Sampling, SampleParams | None]:
    """Flags first, then params.yaml's sample section (when the file exists), then plain sampling."""
    params_file = _params_file(args)
    section: SampleParams | None = load_section("sample", params_file) if params_file else None

    def pick(flag: Any, key: str, fallback: Any) -> Any:
        if flag is not None:
            return flag
        return getattr(section, key) if section is not None else fallback

    sampling = Sampling(
        max_new_tokens=pick(args.max_new_tokens, "max_new_tokens", FALLBACK_MAX_NEW_TOKENS),
        temperature=pick(args.temperature, "temperature", 1.0),
        top_k=pick(args.top_k, "top_k", 0),
        top_p=pick(args.top_p, "top_p", 1.0),
        seed=pick(args.seed, "seed", None),
        stop=tuple(pick(args.stop, "stop", [])),
    )
    if sampling.seed is None:
        # a seed drawn here and reported, so that a run the user liked can be repeated
        sampling = replace(sampling, seed=int.from_bytes(os.urandom(4), "little") % 2**31)
    return sampling, section


def _generator(seed: int) -> torch.Generator:
    # a CPU generator: the same seed gives the same tokens whether the model runs on cpu or cuda
    # (for the same logits; kernels may differ in the last bits between devices)
    return torch.Generator().manual_seed(seed)


def _load(args: argparse.Namespace) -> tuple[GPT, Tokenizer, dict, torch.device]:
    device = resolve_device(args.device)
    model, tokenizer, meta = load_model(args.model, device)
    return model, tokenizer, meta, device


# ---------------------------------------------------------------------------------------------
# chat and sample


def _read_line(interactive: bool) -> str | None:
    """The next line of input without its line ending, or None at end of input."""
    if interactive:
        try:
            return input("> ")  # input() gives line editing and history where readline exists
        except EOFError:
            return None
    line = sys.stdin.readline()
    if not line:
        return None
    return line.rstrip("\r\n")


CHAT_HELP = """commands (a line that starts with /):
  /temperature X   softmax temperature; 0 is greedy
  /top_k N         keep the N most likely tokens; 0 keeps all
  /top_p P         keep the smallest set of tokens whose probability reaches P, in (0, 1]; 1 keeps all
  /max_tokens N    new tokens per reply
  /reset           forget the conversation so far
  /help            this list
The model sees the conversation so far (its last block_size tokens). Ctrl-C stops a reply; Ctrl-D quits."""

# setting -> (Sampling field, parse, valid?, what is allowed)
_SETTINGS: dict[str, tuple[str, Callable[[str], Any], Callable[[Any], bool], str]] = {
    "temperature": ("temperature", float, lambda v: 0.0 <= v < float("inf"), "a number >= 0"),
    "top_k": ("top_k", int, lambda v: v >= 0, "a whole number >= 0"),
    "top_p": ("top_p", float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]"),
    "max_tokens": ("max_new_tokens", int, lambda v: v >= 1, "a whole number >= 1"),
}


def chat_command(line: str, sampling: Sampling) -> tuple[Sampling, str, bool]:
    """Apply one chat /command: (the settings after it, what to tell the user, whether to forget
    the conversation). An unknown command or a bad value raises GptcoreError and changes nothing."""
    name, _, value = line[1:].strip().partition(" ")
    if name == "help":
        return sampling, CHAT_HELP, False
    if name == "reset":
        return sampling, "[conversation cleared]", True
    if name not in _SETTINGS:
        raise GptcoreError(f"unknown command /{name}: /help lists them")
    field, parse, valid, allowed = _SETTINGS[name]
    try:
        parsed = parse(value.strip())
    except ValueError:
        parsed = None
    if parsed is None or not valid(parsed):
        raise GptcoreError(f"/{name} needs {allowed}, got {value.strip()!r}")
    sampling = replace(sampling, **{field: parsed})
    return sampling, f"[{sampling.describe()}]", False


def _write_completion(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    sampling: Sampling,
    generator: torch.Generator,
    written: list[str],
) -> None:
    """Stream the completion of `prompt` to stdout as it is generated, appending each piece to
    `written` (so a reply stopped by Ctrl-C still knows what it said)."""
    for piece in stream_completion(
        model,
        tokenizer,
        prompt,
        sampling.max_new_tokens,
        generator=generator,
        **sampling.controls(),
    ):
        sys.stdout.write(piece)
        sys.stdout.flush()
        written.append(piece)


def cmd_chat(args: argparse.Namespace) -> None:
    # Ctrl-C stops a reply: a process started in the background by a non-interactive shell
    # inherits SIGINT as ignored, and Python then never raises KeyboardInterrupt; take it back
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sampling, _ = resolve_sampling(args)
    model, tokenizer, _, device = _load(args)
    interactive = sys.stdin.isatty()
    generator = _generator(sampling.seed)
    # the banner goes to stderr: stdout carries only the model's text, so a piped run's output
    # is exactly the completions
    print(
        f"gptcore chat: {args.model} ({model.num_params(non_embedding=False):,} parameters, "
        f"{tokenizer.kind} tokenizer of {tokenizer.vocab_size} tokens) on {device}\n"
        f"{sampling.describe()}\n"
        "Each line continues the conversation; /help lists the commands. Ctrl-C stops a reply; Ctrl-D quits.",
        file=sys.stderr,
    )
    # the conversation as the model sees it: each line and its reply, as printed; kept to a tail
    # comfortably longer than the block_size tokens the model reads
    conversation = ""
    keep_chars = 16 * model.config.block_size
    while True:
        try:
            line = _read_line(interactive)
        except KeyboardInterrupt:  # Ctrl-C at the prompt: leave as Ctrl-D would
            line = None
        if line is None:
            if interactive:
                print(file=sys.stderr)  # end the line the prompt is on
            return
        if line.startswith("/"):
            try:
                sampling, message, reset = chat_command(line, sampling)
            except GptcoreError as exc:
                print(f"error: {exc}", file=sys.stderr)
                continue
            conversation = "" if reset else conversation
            print(message, file=sys.stderr)
            continue
        written: list[str] = []
        try:
            _write_completion(model, tokenizer, conversation + line, sampling, generator, written)
        except KeyboardInterrupt:  # Ctrl-C during a reply: drop the rest of it, back to the prompt
            sys.stdout.write("\n")
            print("[stopped]", file=sys.stderr)
            written.append("\n")
        reply = "".join(written)
        if not reply.endswith("\n"):
            sys.stdout.write("\n")
            reply += "\n"
        sys.stdout.flush()
        conversation = (conversation + line + reply)[-keep_chars:]


def cmd_sample(args: argparse.Namespace) -> None:
    sampling, section = resolve_sampling(args)
    prompts = args.prompts or (section.prompts if section is not None else None)
    if not prompts:
        raise GptcoreError(
            f"no prompt: pass --prompt TEXT (or run where {DEFAULT_PARAMS} lists sample.prompts)"
        )
    model, tokenizer, _, _ = _load(args)
    total = len(prompts) * args.num_samples
    count = 0
    for prompt in prompts:
        # seeded once per prompt, as the sample stage does: a prompt's completions do not depend
        # on which prompts came before it, and the first one matches reports/samples.md
        generator = _generator(sampling.seed)
        if args.num_samples == 1:  # streamed as it is generated
            count += 1
            if total > 1:
                print(f"--- sample {count} of {total} ---")
            written = [prompt]
            sys.stdout.write(prompt)
            _write_completion(model, tokenizer, prompt, sampling, generator, written)
            if not "".join(written).endswith("\n"):
                sys.stdout.write("\n")
            continue
        # several samples of a prompt: the rows of one batch, one forward pass per step for all
        texts = complete_batch(
            model,
            tokenizer,
            prompt,
            args.num_samples,
            sampling.max_new_tokens,
            generator=generator,
            **sampling.controls(),
        )
        for text in texts:
            count += 1
            print(f"--- sample {count} of {total} ---")
            full = prompt + text
            print(full, end="" if full.endswith("\n") else "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# info


def _flops(n: float) -> str:
    for unit, size in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,.0f} FLOP"


def _scalar(value: object) -> str:
    """A meta value as text; "" for containers, which info leaves out."""
    if isinstance(value, (bool, str)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.6g}"
    return ""


def _table(rows: Sequence[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}".rstrip() for label, value in rows)


def _vocab_from_folder() -> tuple[int, str]:
    """(vocab size, how it was found) from data/vocab, or the placeholder when there is none."""
    if not (VOCAB_DIR / "tokenizer.json").is_file():
        return PLACEHOLDER_VOCAB_SIZE, (
            f"{PLACEHOLDER_VOCAB_SIZE} (placeholder: vocabulary unknown, {VOCAB_DIR}/tokenizer.json not found; "
            "run dvc repro build_vocab)"
        )
    tokenizer = load_tokenizer(VOCAB_DIR)
    return tokenizer.vocab_size, f"{tokenizer.vocab_size} ({tokenizer.kind} tokenizer in {VOCAB_DIR})"


def cmd_info(args: argparse.Namespace) -> None:
    params_file = _params_file(args)
    train: TrainParams | None = load_section("train", params_file) if params_file else None
    model_path = (
        args.model if args.model is not None else (DEFAULT_MODEL if DEFAULT_MODEL.is_file() else None)
    )
    rows: list[tuple[str, str]] = []
    if model_path is not None:
        model, tokenizer, meta = load_model(model_path, "cpu")
        config = model.config
        rows.append(("model file", str(model_path)))
        # small facts the training run recorded (steps, tokens seen, losses)
        rows += [(f"  {key}", _scalar(value)) for key, value in sorted(meta.items()) if _scalar(value)]
        rows.append(("tokenizer", f"{tokenizer.kind}, {tokenizer.vocab_size} tokens"))
    else:
        if train is None:
            raise DataError(
                f"no model file ({DEFAULT_MODEL} not found) and no {DEFAULT_PARAMS} to size a model from"
            )
        vocab_size, vocab_note = _vocab_from_folder()
        config = model_config(train, vocab_size)
        # the meta device builds the modules without allocating their weights: exact counts, no memory
        with torch.device("meta"):
            model = GPT(config)
        rows.append(
            ("model file", f"none ({DEFAULT_MODEL} not found): sizes from {params_file} train section")
        )
        rows.append(("vocab_size", vocab_note))

    total = model.num_params(non_embedding=False)
    non_embedding = model.num_params(non_embedding=True)
    rows.append(("config", " ".join(f"{k}={v}" for k, v in config.to_dict().items())))
    rows.append(("parameters (total)", f"{total:,}"))
    rows.append(
        ("parameters (non-embedding)", f"{non_embedding:,} (position table left out; FLOPs use this)")
    )
    fpt_train = flops_per_token(config, non_embedding, training=True)
    fpt_forward = flops_per_token(config, non_embedding, training=False)
    rows.append(("FLOPs per token (training)", f"{fpt_train:,} ({_flops(fpt_train)})"))
    rows.append(("FLOPs per token (forward)", f"{fpt_forward:,} ({_flops(fpt_forward)})"))
    rows.append(("weights (fp32)", f"{4 * total:,} bytes ({human_bytes(4 * total)})"))
    if train is None:
        rows.append(("memory plan", f"unknown: no {DEFAULT_PARAMS} to read train.batch_size from"))
    else:
        tokens_per_step = train.batch_size * config.block_size * train.grad_accum_steps
        rows.append(
            (
                "FLOPs per optimizer step",
                f"{_flops(fpt_train * tokens_per_step)} ({tokens_per_step:,} tokens)",
            )
        )
        if train.preset:
            rows.append(("preset", train.preset))
        rows += memory_plan(train, config, resolve_device(train.device)).rows()
    print(_table(rows))


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        run_main(lambda: args.run(args))
    except BrokenPipeError:
        # the reader went away (`gptcore sample | head`): not an error of ours; point stdout at
        # /dev/null so that the interpreter's final flush does not report it either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
