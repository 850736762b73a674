"""Reports kept in git: the train-vs-val loss chart and a confusion matrix (PNG), the DVCLive
logger of the training and fine-tuning stages, and their telemetry. (Metric JSON files:
atomic.write_json.)

matplotlib, pandas and DVCLive are imported by the functions that use them, so a stage that only
logs does not pay for the plotting libraries, and one that only plots does not import DVCLive."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptcore.atomic import atomic_file, write_json, write_text
from gptcore.errors import DataError

if TYPE_CHECKING:
    import pandas as pd


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless: stages run without a display
    import matplotlib.pyplot as plt

    return plt


# Logged metrics named perf/... are telemetry (`Telemetry`), never DVCLive's
TELEMETRY_PREFIX = "perf/"


class Telemetry:
    """What a run measured of itself where it ran: throughput, wall seconds, memory, what
    `auto` timed. Two runs of the same inputs never agree on these, so they are kept apart from
    the stage's outputs: no dvc.yaml declares the files, so DVC neither hashes them into dvc.lock
    nor lists them in `dvc exp show`, and a re-run of the same inputs leaves the lock as it was.

    `path` (reports/telemetry/<stage>.json) gets the run's figures and when it finished; the .tsv
    beside it one row per logged step (`step`, then the perf/ metrics without their prefix, an
    empty cell where a step has none), for a plot against time. Both are written by `write` once
    the stage's outputs are, so a run that fails, or a stage that DVC restores from its run-cache
    instead of running, leaves the telemetry of the last run that finished here."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.log_path = self.path.with_suffix(".tsv")
        self.rows: dict[int, dict[str, float]] = {}

    def record(self, step: int, figures: dict[str, float]) -> None:
        self.rows.setdefault(step, {}).update(figures)

    def write(self, figures: dict[str, Any]) -> None:
        finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json(self.path, {"finished_at": finished, **figures})
        columns = list(dict.fromkeys(name for row in self.rows.values() for name in row))
        lines = ["\t".join(["step", *columns])]
        for step, row in sorted(self.rows.items()):
            lines.append("\t".join([str(step), *(f"{row[c]:.6g}" if c in row else "" for c in columns)]))
        write_text(self.log_path, "\n".join(lines) + "\n")


@contextlib.contextmanager
def live_logger(folder: str, telemetry: Telemetry) -> Iterator[Callable[[int, dict[str, float]], None]]:
    """A function logging (step, {name: value}) to DVCLive in `folder`: one TSV per name under
    folder/plots/metrics, and folder/metrics.json with the latest values. dvcyaml=False: the
    dvc.yaml files are written by hand, and DVCLive must not edit them. Names starting with perf/
    go to `telemetry` instead: DVCLive's files are outputs hashed in dvc.lock, which must come out
    the same from the same inputs, and for that reason their rows carry no timestamp either.

    If the run fails (a full disk, a loss that became NaN), `folder` is removed: a stage leaves no
    half-written output, and a resumed run re-logs the evaluations its checkpoint holds. An
    interrupted run (Ctrl-C) keeps the curve so far."""
    from dvclive import Live

    try:
        with Live(dir=folder, dvcyaml=False, save_dvc_exp=False) as live:

            def log(step: int, metrics: dict[str, float]) -> None:
                measured = {k: v for k, v in metrics.items() if k.startswith(TELEMETRY_PREFIX)}
                if measured:
                    telemetry.record(step, {k.removeprefix(TELEMETRY_PREFIX): v for k, v in measured.items()})
                results = {k: v for k, v in metrics.items() if k not in measured}
                if not results:
                    return
                live.step = step
                for name, value in results.items():
                    live.log_metric(name, value, timestamp=False)
                live.make_summary()

            yield log
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def headline(report: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The figures of a detailed report that `dvc metrics show` lists: the entries named by `keys`,
    dotted for nested ones ("test.accuracy"), nested as in the report. A key the report lacks (mfu,
    measured on CUDA only) is left out."""
    out: dict[str, Any] = {}
    for key in keys:
        *parents, name = key.split(".")
        source: Any = report
        for part in parents:
            source = source.get(part) if isinstance(source, dict) else None
        if not isinstance(source, dict) or name not in source:
            continue
        target = out
        for part in parents:
            target = target.setdefault(part, {})
        target[name] = source[name]
    return out


def copy_loss_log(source: Path | str, path: Path | str) -> None:
    """Keep a copy of a DVCLive loss log beside the reports: DVCLive's own logs are a cached DVC
    output (so the run-cache can restore them), absent from a clone that has no DVC remote, and the
    `loss` plot must draw there too."""
    read_loss_log(source)  # checks the columns
    write_text(path, Path(source).read_text(encoding="utf-8"))


def read_loss_log(path: Path | str) -> pd.DataFrame:
    """A DVCLive metric log (`step<TAB>loss` with a header), as a DataFrame."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found: run the train stage first")
    frame = pd.read_csv(path, sep="\t")
    if not {"step", "loss"} <= set(frame.columns):
        raise DataError(f"{path}: expected columns step and loss, found {list(frame.columns)}")
    return frame


def plot_losses(curves: dict[str, pd.DataFrame], path: Path | str, title: str = "Train vs val loss") -> None:
    """Draw each named (step, loss) curve on one chart and save it as a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, frame in curves.items():
        ax.plot(frame["step"], frame["loss"], marker="o", markersize=2.5, linewidth=1.4, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_file(path) as tmp:
        # no timestamp in the metadata: the same curves give the same bytes
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


def plot_confusion(matrix: list[list[int]], labels: list[str], path: Path | str, title: str) -> None:
    """A confusion matrix (rows: actual class, columns: predicted) as a PNG, counts in the cells."""
    k = len(labels)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.0 * k + 2), dpi=120)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    peak = max((max(row) for row in matrix), default=0)
    for r, row in enumerate(matrix):
        for c, count in enumerate(row):
            ax.text(
                c, r, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black"
            )
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
