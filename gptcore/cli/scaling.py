"""`gptcore scaling recommend`: what to train for a budget of FLOPs or of minutes, from the scaling
pipeline's fit (reports/scaling/fit.json) and, for minutes, the speed the runs measured where they
trained (their telemetry, reports/telemetry/scaling/)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from gptcore.errors import DataError, GptcoreError, parse_json
from gptcore.scaling.fit import (
    REPRO,
    Recommendation,
    flops_text,
    laws_from_report,
    parse_flops,
    read_telemetry,
    recommend,
    recommendation_table,
    speed_law,
)

DEFAULT_FIT = Path("reports/scaling/fit.json")
DEFAULT_TELEMETRY = Path("reports/telemetry/scaling")


def _flops(text: str) -> float:
    try:
        return parse_flops(text, "--flops")
    except GptcoreError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes > 0")
    return value


def cmd_recommend(args: argparse.Namespace) -> None:
    if not args.flops and not args.minutes:
        raise DataError("give a budget: --flops 1e15, --minutes 8, or both (each may repeat)")
    if not args.fit.is_file():
        raise DataError(f"{args.fit} not found: run `{REPRO}` first (it trains the grid and fits it)")
    laws = laws_from_report(parse_json(args.fit.read_bytes(), str(args.fit)), str(args.fit))
    table: dict[str, Recommendation] = {}
    for flops in args.flops or []:
        table[f"{flops_text(flops)} FLOPs"] = recommend(laws, flops=flops)
    if args.minutes:
        telemetry = read_telemetry(args.telemetry)
        if not telemetry:
            raise DataError(
                f"no telemetry in {args.telemetry}: a budget in minutes needs the runs' measured tokens/s, "
                f"written where they trained (`{REPRO}` on this machine)"
            )
        speed = speed_law(telemetry, laws.sizes, str(args.telemetry))
        for minutes in args.minutes:
            table[f"{minutes:g} min"] = recommend(laws, seconds=60 * minutes, speed=speed)
    print(f"from {args.fit}: N parameters (as the fit counts them), D tokens, L(N, D) predicted")
    print(recommendation_table(table))


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], sampling: argparse.ArgumentParser
) -> None:
    """The `scaling` command and its `recommend`; `sampling` is the other commands' and unused."""
    scaling = commands.add_parser("scaling", help="what the scaling pipeline's fit recommends")
    actions = scaling.add_subparsers(dest="action", required=True, metavar="{recommend}")
    rec = actions.add_parser(
        "recommend",
        help="model size, tokens and predicted loss for a budget of FLOPs or of minutes on this machine",
    )
    rec.add_argument("--flops", type=_flops, action="append", metavar="C", help="a budget of training FLOPs")
    rec.add_argument(
        "--minutes",
        type=_minutes,
        action="append",
        metavar="M",
        help="a budget of training minutes on this machine (from the runs' measured tokens/s)",
    )
    rec.add_argument("--fit", type=Path, default=DEFAULT_FIT, help="the fit (default: %(default)s)")
    rec.add_argument(
        "--telemetry",
        type=Path,
        default=DEFAULT_TELEMETRY,
        help="the runs' telemetry, for --minutes (default: %(default)s)",
    )
    rec.set_defaults(run=cmd_recommend)
