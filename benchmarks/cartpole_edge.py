"""What a CartPole checkpoint knows about the track's end, by how far the cart is from the centre.

    python benchmarks/cartpole_edge.py runs/X runs/Y:4000 ...   # RUN_DIR[:STEP], default its newest checkpoint

The checkpoint's policy plays the trainer's own evaluation episodes (deterministic, the same seeds);
every state visited is binned by |x| and the table gives, per bin: the mean |cart velocity|; the
critic's value (online, and the target critic that training bootstraps from) beside the discounted
return that followed; the world model's open-loop error in cart position after `horizon` imagined
steps with the real actions; the probability imagination gives to lasting those steps (the product of
its continue probabilities) beside how often the real episode ended within them; and how sure the
policy is (its largest action probability). A model and critic that know the edge, and a policy that
still drives off it, point at the actor.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from reverie.evaluation import play_episodes
from reverie.trainer.agent import EpisodePlayer
from reverie.trainer.checkpoint import load_run_agent

BINS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.4, np.inf)
TRACK = 2.4


def discounted(rewards: np.ndarray, gamma: float) -> np.ndarray:
    out, acc = np.zeros(len(rewards)), 0.0
    for t in reversed(range(len(rewards))):
        acc = rewards[t] + gamma * acc
        out[t] = acc
    return out


def visited(agent, episodes) -> dict[str, np.ndarray]:
    """Per visited state: x, |v|, values, observed return, open-loop x error, imagined and real survival, policy certainty."""
    cfg, wm, horizon = agent.cfg, agent.world_model, agent.cfg.horizon
    columns: dict[str, list] = {k: [] for k in ("x", "v", "value", "target", "observed", "x_error", "lasts", "ended", "sure")}
    for e in episodes:
        obs = torch.as_tensor(e.observations[:-1], dtype=torch.float32)
        n = len(obs)
        with torch.no_grad():
            states = wm.encode(obs)
            columns["value"] += agent.value(states).tolist()
            columns["target"] += agent.target_value(states).tolist()
            columns["sure"] += agent.policy(states).probs.max(-1).values.tolist()
            actions = torch.as_tensor(np.asarray(e.actions)).long()
            belief, lasts = states, torch.ones(n)
            for k in range(horizon):  # open loop from every step at once, with the real actions (the last one repeated)
                belief = wm.transition(belief, wm.encode_action(actions[np.minimum(np.arange(n) + k, n - 1)]))
                lasts = lasts * torch.sigmoid(wm.continue_.net(belief).squeeze(-1))
            predicted_x = wm.decode(belief)[:, 0].numpy()
        reached = np.arange(n) + horizon
        columns["x_error"] += np.where(reached <= n, np.abs(predicted_x - e.observations[np.minimum(reached, n), 0]), np.nan).tolist()
        columns["lasts"] += lasts.tolist()
        columns["ended"] += (e.terminated & (reached >= n)).astype(float).tolist()
        columns["x"] += e.observations[:-1, 0].tolist()
        columns["v"] += np.abs(e.observations[:-1, 1]).tolist()
        columns["observed"] += discounted(np.asarray(e.rewards), cfg.gamma).tolist()
    return {k: np.asarray(v, np.float64) for k, v in columns.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="RUN_DIR or RUN_DIR:STEP")
    args = parser.parse_args()
    for spec in args.runs:
        run, _, step = spec.partition(":")
        agent, state = load_run_agent(Path(run), int(step) if step else None)
        cfg = agent.cfg
        player = EpisodePlayer(agent, deterministic=True)
        episodes = play_episodes(player, cfg.env_spec, cfg.eval_episodes, cfg.seed, start=player.reset)
        off = sum(e.terminated and abs(e.observations[-1][0]) > TRACK for e in episodes)
        print(f"\n{Path(run).name} at env step {state['position']['env_step']:,}: returns "
              f"{[int(e.total) for e in episodes]}, {off} of {len(episodes)} off the track")
        print(f"| \\|x\\| | states | mean \\|v\\| | value | target value | observed return | x error after {cfg.horizon} "
              f"imagined steps | imagined p(lasting {cfg.horizon}) | ended within {cfg.horizon} | policy's top probability |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        c = visited(agent, episodes)
        for low, high in zip(BINS[:-1], BINS[1:]):
            m = (np.abs(c["x"]) >= low) & (np.abs(c["x"]) < high)
            if m.any():
                error = c["x_error"][m]
                error = f"{np.nanmean(error):.3f}" if np.isfinite(error).any() else "–"
                print(f"| {low:g}-{high:g} | {m.sum()} | {c['v'][m].mean():.2f} | {c['value'][m].mean():.1f} | "
                      f"{c['target'][m].mean():.1f} | {c['observed'][m].mean():.1f} | {error} | {c['lasts'][m].mean():.3f} | "
                      f"{c['ended'][m].mean():.3f} | {c['sure'][m].mean():.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
