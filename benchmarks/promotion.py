"""What `reverie up` serves over a run: the BEST promotion rule replayed over its evaluated exports.

    python benchmarks/promotion.py runs/benchmark/cartpole_none_seed*      # runs of benchmarks/learning.py
    python benchmarks/promotion.py RUN_DIR ... --tolerance 0.05 --export-every 1000

Each export carries the evaluation of its own weights (the trainer evaluates before it exports at
the same step). Per run, at every export: the newest version's evaluation beside the served one's
(BEST, `reverie.bundle.promotes`), and the largest drop of a served evaluation below an earlier
served one; then over all runs, the worst such drop against the newest version's worst.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from reverie.bundle import promotes
from reverie.runs import RunDir


def exports(run_dir: Path, every: int) -> list[tuple[int, float]]:
    """(env step, eval return) of each export that carried an evaluation."""
    rows = RunDir(run_dir).metrics()
    return [(r["env_step"], r["eval_return"]) for r in rows if "eval_return" in r and r["env_step"] % every == 0]


def served(evaluated: list[tuple[int, float]], tolerance: float) -> list[float]:
    """The served version's evaluation after each export (following BEST)."""
    record, best, out = None, None, []
    for _, value in evaluated:
        if promotes(value, record, tolerance):
            best = value
        record = value if record is None else max(record, value)
        out.append(best)
    return out


def largest_drop(values: list[float]) -> float:
    """The most any value falls below an earlier one."""
    peak, drop = float("-inf"), 0.0
    for v in values:
        peak = max(peak, v)
        drop = max(drop, peak - v)
    return drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.05, help="the run's promotion_tolerance")
    parser.add_argument("--export-every", type=int, default=1000, help="the run's export_every")
    args = parser.parse_args()
    print("| run | env steps | newest version's evaluation | served (BEST) | served's largest drop | newest's largest drop |")
    print("|---|---|---|---|---|---|")
    worst_served, worst_newest = 0.0, 0.0
    for run in args.runs:
        evaluated = exports(run, args.export_every)
        newest, best = [v for _, v in evaluated], served(evaluated, args.tolerance)
        worst_served, worst_newest = max(worst_served, largest_drop(best)), max(worst_newest, largest_drop(newest))
        print(f"| {run.name} | {', '.join(f'{s:,}' for s, _ in evaluated)} | {', '.join(f'{v:.0f}' for v in newest)} | "
              f"{', '.join(f'{v:.0f}' for v in best)} | {largest_drop(best):.1f} | {largest_drop(newest):.1f} |")
    print(f"\nlargest drop of a served evaluation below an earlier served one: {worst_served:.1f} "
          f"(the newest version's: {worst_newest:.1f}); tolerance {args.tolerance:.0%} of the record")


if __name__ == "__main__":
    main()
