"""`gptcore chat`: the REPL that continues each line typed (or piped in), and its /commands."""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import replace

from gptcore.cli.flags import add_sampling_flag, load_from_flags, parse_setting, resolve_sampling
from gptcore.cli.sample import note_unknown, write_completion
from gptcore.errors import GptcoreError
from gptcore.finetune.instruct import render_prompt, reply_stops, template_of
from gptcore.generate import seeded_generator
from gptcore.sampling import Sampling, SamplingError


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
The model sees the conversation so far (its last block_size tokens).
Ctrl-C stops a reply, or clears the line being typed; Ctrl-D quits."""

# chat /command -> the sampling setting it changes
_CHAT_SETTINGS = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "max_tokens": "max_new_tokens",
}


def chat_command(line: str, sampling: Sampling) -> tuple[Sampling, str, bool]:
    """Apply one chat /command: (the settings after it, what to tell the user, whether to forget
    the conversation). An unknown command or a bad value raises GptcoreError (for a bad value,
    the Sampling type's message, as params.yaml and the flags give it) and changes nothing."""
    name, _, value = line[1:].strip().partition(" ")
    if name == "help":
        return sampling, CHAT_HELP, False
    if name == "reset":
        return sampling, "[conversation cleared]", True
    if name not in _CHAT_SETTINGS:
        raise GptcoreError(f"unknown command /{name}: /help lists them")
    field = _CHAT_SETTINGS[name]
    try:
        sampling = replace(sampling, **{field: parse_setting(field, value)})
    except SamplingError as exc:
        raise GptcoreError(f"/{name}: {exc}") from None
    return sampling, f"[{sampling.describe()}]", False


def cmd_chat(args: argparse.Namespace) -> None:
    # Ctrl-C stops a reply: a process started in the background by a non-interactive shell
    # inherits SIGINT as ignored, and Python then never raises KeyboardInterrupt; take it back
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sampling, _ = resolve_sampling(args)
    model, tokenizer, meta, device = load_from_flags(args)
    # an instruction-tuned model: every line is wrapped in its template, seen alone (the template
    # holds one turn), and the reply ends where the template says
    template = template_of(meta)
    if template is not None:
        sampling = replace(sampling, stop=sampling.stop + reply_stops(template))
    elif args.instruction is not None:
        raise GptcoreError(
            f"--instruction needs an instruction-tuned model; {args.model} has no prompt template"
        )
    interactive = sys.stdin.isatty()
    generator = seeded_generator(sampling)
    # the banner goes to stderr: stdout carries only the model's text, so a piped run's output
    # is exactly the completions
    if template is None:
        turns = "Each line continues the conversation"
    else:
        turns = f"Prompt template {template.name}: each line is a new " + (
            "input to the instruction" if args.instruction is not None else "instruction"
        )
    print(
        f"gptcore chat: {args.model} ({model.num_params(non_embedding=False):,} parameters, "
        f"{tokenizer.kind} tokenizer of {tokenizer.vocab_size} tokens) on {device}\n"
        f"{sampling.describe()}\n"
        f"{turns}; /help lists the commands. Ctrl-C stops a reply; Ctrl-D quits.",
        file=sys.stderr,
    )
    # the conversation as the model sees it: each line and its reply, as printed; kept to a tail
    # comfortably longer than the block_size tokens the model reads
    conversation = ""
    keep_chars = 16 * model.config.block_size
    noted: set[str] = set()
    while True:
        try:
            line = _read_line(interactive)
        except KeyboardInterrupt:
            if interactive:  # Ctrl-C at the prompt drops what was typed, as in a shell; Ctrl-D quits
                print(file=sys.stderr)
                continue
            line = None  # a pipe has no line to clear: stop, as at its end
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
        note_unknown(tokenizer, line, noted)
        written: list[str] = []
        if template is None:
            prompt = conversation + line
        elif args.instruction is not None:
            prompt = render_prompt(template, args.instruction, line)
        else:
            prompt = render_prompt(template, line)
        try:
            write_completion(model, tokenizer, prompt, sampling, generator, written)
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


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], sampling: argparse.ArgumentParser
) -> None:
    """The `chat` command's flags; `sampling` holds the model and sampling flags it may share."""
    chat = commands.add_parser(
        "chat", parents=[sampling], help="continue each line you type (or pipe in) with the model"
    )
    chat.add_argument(
        "--instruction",
        metavar="TEXT",
        help="instruction-tuned models: the instruction of every turn, each line then being its input "
        "(default: each line is the instruction)",
    )
    chat.set_defaults(run=cmd_chat)
    add_sampling_flag(chat, "seed")
