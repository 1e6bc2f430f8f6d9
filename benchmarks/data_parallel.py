"""What data-parallel training buys: env steps, updates and sampled transitions per second at 1 and N
processes, the same training run otherwise, measured in one sitting.

    python benchmarks/data_parallel.py --nproc 1 2 --steps 800 --threads 1
    python benchmarks/data_parallel.py --nproc 1 4 8 --set pixels=true --steps 400   # a GPU machine: one GPU a rank

Each row is a real `Trainer` (the defaults, or `--set` overrides) from env step 0 to `--steps`, the
updates starting at `learning_starts`; no evaluation, checkpoint or export inside the timed part.
Rank 0 plays the env and shares each transition, so env steps/s is the pace of the whole lockstep
(every rank's updates included); every rank draws its own batch, so the transitions learned from per
second are updates/s x batch_size x N. Rows alternate over `--rounds`; the median is printed, with
each N's ratio to the first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from reverie.trainer import distributed
from reverie.trainer.config import build_config
from reverie.trainer.loop import Trainer


def _rank(ranks, cfg, run_dir: Path, out: Path) -> None:
    torch.set_num_threads(cfg.threads)
    trainer = Trainer(cfg, run_dir, ranks=ranks)
    started = time.perf_counter()
    trainer.run()
    if ranks is None or ranks.main:
        out.write_text(json.dumps({"seconds": time.perf_counter() - started, "updates": trainer.updates,
                                   "env_steps": trainer.env_step}))


def measure(nproc: int, cfg, workdir: Path) -> dict[str, float]:
    run_dir, out = Path(tempfile.mkdtemp(dir=workdir)), workdir / f"result{nproc}.json"
    if nproc == 1:
        _rank(None, cfg, run_dir, out)
    else:
        distributed.spawn(nproc, _rank, cfg, run_dir, out).join()
    result = json.loads(out.read_text())
    seconds = result["seconds"]
    return {"env_steps_s": result["env_steps"] / seconds, "updates_s": result["updates"] / seconds,
            "samples_s": result["updates"] * cfg.batch_size * nproc / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    horizon = args.steps * 10
    cfg = build_config(None, [*args.set, "learning_starts=200", f"eval_every={horizon}", f"checkpoint_every={horizon}",
                              f"log_every={horizon}"], total_steps=args.steps, threads=args.threads)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    rows: dict[int, list[dict]] = {n: [] for n in args.nproc}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(args.rounds):
            for n in args.nproc:
                rows[n].append(measure(n, cfg, Path(workdir)))
    print(f"{cfg.env_id}, {args.steps} env steps, batch {cfg.batch_size} per rank, {args.threads} thread(s) a process, "
          f"{device}, median of {args.rounds}")
    print("| processes | env steps/s | updates/s | transitions learned/s | vs first |")
    print("|---|---|---|---|---|")
    base = None
    for n, results in rows.items():
        median = {k: statistics.median(r[k] for r in results) for k in results[0]}
        base = base or median
        print(f"| {n} | {median['env_steps_s']:.1f} | {median['updates_s']:.1f} | {median['samples_s']:.0f} | "
              f"{median['samples_s'] / base['samples_s']:.2f}x |")


if __name__ == "__main__":
    main()
