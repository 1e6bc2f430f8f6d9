"""Where metric rows go: `metrics.jsonl` (one JSON object per log interval), TensorBoard, the
status the service reads, and the training-curves PNG. The loop assembles a row and hands it to
`RunLog.record`; judging it for failure modes, writing and publishing it happen here.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from reverie.runs import RunDir  # noqa: E402

from .config import Config  # noqa: E402
from .diagnostics import judge, solved_return, window  # noqa: E402


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


class RunLog:
    """A run's record, row by row: each row judged for failure modes over the rows before it (read back
    after a resume), written, published as the run's status, and at an evaluation the curves redrawn."""

    def __init__(self, cfg: Config, run_dir: RunDir, writer: MetricsWriter, phases: dict[str, int]):
        self.cfg, self.run_dir, self.writer, self.phases = cfg, run_dir, writer, phases
        self.solved_return = solved_return(cfg)
        self.recent_rows = window(run_dir.metrics(), cfg.diagnostics_window)

    def record(self, row: dict, evaluated: bool, fidelity: dict | None) -> None:
        """`fidelity`: the last evaluation's imagination fidelity, published with an evaluated row."""
        self.recent_rows, findings = judge(self.recent_rows, row, self.cfg, self.solved_return)
        row["failure_modes"] = list(findings)
        self.writer.write(row)
        self.run_dir.publish_status(row, fidelity if evaluated else None, findings, self.phases)
        if evaluated:
            plot_training_curves(self.run_dir.metrics(), self.run_dir.curves, self.phases,
                                 f"{self.cfg.env_id} seed {self.cfg.seed}", fidelity)

    def close(self) -> None:
        self.writer.close()


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
