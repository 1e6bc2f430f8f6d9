"""What a CartPole run's continue head says about the episode endings in its own replay, by kind.

    python benchmarks/cartpole_endings.py runs/X runs/Y:7500 ...   # RUN_DIR[:STEP], default its newest checkpoint
    python benchmarks/cartpole_endings.py --play 10 runs/X ...       # also where its own policy's episodes end

CartPole ends an episode when the pole passes 12 degrees or the cart leaves the track (|x| > 2.4).
For each checkpoint: how many stored terminal transitions are of each kind, and the continue head's
mean and largest probability of "continue" at them (0 is right). Imagination only sees an ending
the head predicts, so an ending kind it misreads is one the policy never learns to avoid.

With `--play N`, the checkpoint's policy also plays the trainer's own N evaluation episodes
(deterministic, the same seeds) and the table says how many ended with the cart off the track, how
many with the pole fallen, and how many ran to the time limit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from reverie.trainer.checkpoint import load_run_agent
from reverie.trainer.replay import Replay

TRACK = 2.4  # |x| beyond which CartPole-v1 terminates


def replay_of(agent, state) -> Replay:
    """The checkpoint's own replay."""
    replay = Replay(agent.cfg.replay_capacity, agent.space.obs_shape, ())
    replay.load_state_dict(state["replay"])
    return replay


def continue_at_endings(run_dir: Path, step: int | None):
    """(agent, env step, p(continue) at edge endings, p(continue) at pole endings) of one checkpoint."""
    agent, state = load_run_agent(run_dir, step)
    steps = replay_of(agent, state).steps()
    endings = steps["next_obs"][steps["terminated"].astype(bool)]
    with torch.no_grad():
        wm = agent.world_model
        logits = wm.continue_.net(wm.encode(torch.as_tensor(endings, dtype=torch.float32))).squeeze(-1)
    p = torch.sigmoid(logits).numpy()
    edge = np.abs(endings[:, 0]) > TRACK
    return agent, state["position"]["env_step"], p[edge], p[~edge]


def played_endings(agent, episodes: int) -> tuple[int, int, int]:
    """(off the track, pole fallen, not ended) over the run's own evaluation episodes, acting deterministically."""
    from reverie.evaluation import play_episodes
    from reverie.trainer.agent import EpisodePlayer

    player = EpisodePlayer(agent, deterministic=True)
    played = play_episodes(player, agent.cfg.env_spec, episodes, agent.cfg.seed, start=player.reset)
    off = sum(e.terminated and abs(e.observations[-1][0]) > TRACK for e in played)
    ended = sum(e.terminated for e in played)
    return off, ended - off, episodes - ended


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="RUN_DIR or RUN_DIR:STEP")
    parser.add_argument("--play", type=int, default=0, metavar="N", help="also play N of the run's evaluation episodes")
    args = parser.parse_args()
    played = " | its policy's episodes: off the track / pole fallen / to the limit" if args.play else ""
    print(f"| run | env step | cart off the track: n, mean / max p(continue) | pole fallen: n, mean / max p(continue){played} |")
    print("|---|---|---|---|" + ("---|" if args.play else ""))
    for spec in args.runs:
        run, _, step = spec.partition(":")
        agent, at, edge, pole = continue_at_endings(Path(run), int(step) if step else None)
        cell = lambda p: f"{len(p)}, {p.mean():.3f} / {p.max():.3f}" if len(p) else "0"  # noqa: E731
        ends = " | " + " / ".join(map(str, played_endings(agent, args.play))) if args.play else ""
        print(f"| {Path(run).name} | {at:,} | {cell(edge)} | {cell(pole)}{ends} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
