"""Reports kept in git: the train-vs-val loss chart (PNG). (Metric JSON files: atomic.write_json.)"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: stages run without a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from gptcore.atomic import atomic_file  # noqa: E402
from gptcore.errors import DataError  # noqa: E402


def read_loss_log(path: Path | str) -> pd.DataFrame:
    """A DVCLive metric log (`step<TAB>loss` with a header), as a DataFrame."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found: run the train stage first")
    frame = pd.read_csv(path, sep="\t")
    if not {"step", "loss"} <= set(frame.columns):
        raise DataError(f"{path}: expected columns step and loss, found {list(frame.columns)}")
    return frame


def plot_losses(curves: dict[str, pd.DataFrame], path: Path | str, title: str = "Train vs val loss") -> None:
    """Draw each named (step, loss) curve on one chart and save it as a PNG."""
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
