"""Where metric rows go: `metrics.jsonl` (one JSON object per log interval), TensorBoard, and
the training-curves PNG. One writer behind one interface, so the loop only calls `write`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from reverie.runs import RunDir  # noqa: E402


class MetricAverager:
    """Averages the per-update metrics between two log rows."""

    def __init__(self):
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.sums[k] += v
            self.counts[k] += 1

    def pop(self) -> dict[str, float]:
        out = {k: self.sums[k] / self.counts[k] for k in self.sums}
        self.sums.clear()
        self.counts.clear()
        return out


class MetricsWriter:
    def __init__(self, run: RunDir):
        self.run = run
        self.tensorboard = SummaryWriter(str(run.tensorboard))

    def write(self, row: dict) -> None:
        self.run.append_metrics(row)
        step = int(row["env_step"])
        for k, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "env_step":
                self.tensorboard.add_scalar(k, v, step)
        self.tensorboard.flush()

    def close(self) -> None:
        self.tensorboard.close()


CURVES = (
    ("eval_return", "eval return (real env)"),
    ("mean_imagined_return", "mean imagined return"),
    ("dynamics_loss", "dynamics loss"),
    ("reward_mae", "reward MAE"),
    ("critic_loss", "critic loss"),
    ("entropy", "policy entropy"),
)


def plot_training_curves(rows: list[dict], path: Path, phase_boundaries: dict[str, int], title: str,
                         fidelity: dict | None = None) -> None:
    """Six panels of the seed's headline metrics with the phase boundaries marked, and beside them
    the imagination's error per imagined step at the last evaluation (`fidelity`); written atomically."""
    fig, axes = plt.subplots(2, 4, figsize=(17, 6.5), constrained_layout=True)
    _plot_fidelity(axes[0, 3], axes[1, 3], fidelity)
    for ax, (key, label) in zip(axes[:, :3].flat, CURVES):
        points = [(r["env_step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if key == "eval_return" else None, markersize=3)
        for name, step in phase_boundaries.items():
            ax.axvline(step, color="grey", linestyle="--", linewidth=0.8)
            ax.text(step, 1.0, f" {name}", transform=ax.get_xaxis_transform(), fontsize=7, va="top", color="grey")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("env step", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)


def _plot_fidelity(error_ax, continue_ax, fidelity: dict | None) -> None:
    """Open-loop error of the decoded observation and continue accuracy against the imagined step."""
    for ax, (key, label) in ((error_ax, ("obs_error", "imagined obs error (env units)")),
                             (continue_ax, ("continue_accuracy", "imagined continue accuracy"))):
        at = f" at env step {fidelity['env_step']:,}" if fidelity else ""
        if fidelity:
            steps = range(1, len(fidelity[key]) + 1)
            ax.plot(steps, fidelity[key], marker="o", markersize=3)
        ax.set_title(f"{label}{at}", fontsize=10)
        ax.set_xlabel("imagined step (held-out eval episodes)", fontsize=8)
        ax.grid(alpha=0.3)
