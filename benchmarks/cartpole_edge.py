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

    python benchmarks/cartpole_edge.py --players runs/X ...

asks instead how far each part's knowledge carries a controller, in the same episodes: the policy's
mode; "Q1", the action that maximises r + gamma c V one model step ahead (the critic's own ranking of
the actions); and "Q-H", each first action followed by the policy's mode for `horizon` imagined steps,
scored by the discounted imagined rewards and the critic at the end (the model's foresight plus the
critic). Returns and how many episodes ended off the track, per player.

Under the table, the policy's local gains: the mean derivative of (logit push right - logit push
left) by each observation over the replay's newest 2,000 states, as ratios to the pole angle's. A
linear controller that balances and stays centred (LQR for CartPole) has position and velocity
gains of the angle's sign, about 5% and 10% of it; a drifting one has them near zero or reversed.

    python benchmarks/cartpole_edge.py RUN:STEP --frozen 1000 --every 250 [--ema 0.005] [--set actor_lr=0.0001]

then goes on learning inside the checkpoint's own world model, frozen: N more actor and critic
updates (no world-model step, batches from its own replay, no new experience), playing the
evaluation episodes every `--every` updates (off the track / pole fallen / to the limit; with
`--ema`, also those of an exponential average of the policy's weights). A policy that centres here
learns it from what the model and critic already hold; one that centres and then drives off again
shows the actor and critic not settling.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from tqdm import tqdm

from cartpole_endings import played_endings, replay_of  # benchmarks/, the folder of this script, is on sys.path
from reverie.evaluation import play_episodes
from reverie.trainer.agent import EpisodePlayer
from reverie.trainer.checkpoint import load_run_agent
from reverie.trainer.config import UpdateCounts, parse_override
from reverie.trainer.replay import Replay

BINS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.4, np.inf)
OBSERVATIONS = ("x", "v", "theta", "omega")
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


@torch.no_grad()
def lookahead(agent, state: torch.Tensor, steps: int) -> torch.Tensor:
    """Each first action's discounted imagined return: that action, then the policy's mode for the
    remaining `steps` - 1, and the critic's value at the end (one row per action)."""
    wm, gamma, n = agent.world_model, agent.cfg.gamma, agent.space.action_dim
    belief, first = state.repeat(n, 1), wm.encode_action(torch.arange(n))
    total, discount = torch.zeros(n), torch.ones(n)
    for k in range(steps):
        action = first if k == 0 else wm.encode_action(agent.policy(belief).mode())
        reached = wm.transition(belief, action)
        reward, lasting = wm.outcome(belief, action, reached)
        total, discount, belief = total + discount * reward, discount * gamma * lasting, reached
    return total + discount * agent.critic_values(belief)


def players(agent) -> dict:
    """obs -> env action, for the policy and the two lookahead controllers (flat agents)."""
    def state(obs):
        return agent.world_model.encode(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))

    with torch.no_grad():
        return {"policy": lambda obs: int(agent.policy(state(obs)).mode()[0]),
                "Q1": lambda obs: int(lookahead(agent, state(obs), 1).argmax()),
                f"Q-{agent.cfg.horizon}": lambda obs: int(lookahead(agent, state(obs), agent.cfg.horizon).argmax())}


def preference(agent, obs: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """(logit of action 1 - logit of action 0 [N], its gradient in the observation [N, 4]) at `obs`."""
    obs = obs.detach().requires_grad_(True)
    log_probs = agent.policy(agent.world_model.first_belief(obs)).log_probs
    difference = log_probs[:, 1] - log_probs[:, 0]
    difference.sum().backward()
    return difference.detach(), obs.grad.numpy()


def policy_gains(agent, replay: Replay, newest: int = 2000) -> np.ndarray:
    """Mean d(logit of action 1 - logit of action 0) / d(observation) over the replay's newest states."""
    return preference(agent, torch.as_tensor(replay.steps()["obs"][-newest:], dtype=torch.float32))[1].mean(0)


def at_centre(agent) -> tuple[float, np.ndarray]:
    """(logit of action 1 - logit of action 0, its gradient in the observation) at the resting state
    x = v = theta = omega = 0: a deterministic policy's switching surface near the centre, b + g.obs = 0."""
    difference, gradient = preference(agent, torch.zeros(1, len(OBSERVATIONS)))
    return float(difference[0]), gradient[0]


def outward_slopes(agent, replay: Replay, newest: int = 2000) -> np.ndarray:
    """Mean d(value)/d(observation) times the sign of x over the replay's newest states: how much the
    critic's value falls as the cart moves (x) or heads (v) away from the centre; near 0, a flat critic."""
    obs = torch.as_tensor(replay.steps()["obs"][-newest:], dtype=torch.float32).requires_grad_(True)
    agent.value(agent.world_model.first_belief(obs)).sum().backward()
    return (obs.grad * torch.sign(obs.detach()[:, :1])).mean(0).numpy()


def endings(agent, episodes: int, weights: list[torch.Tensor] | None = None) -> str:
    """'off / fallen / to the limit' of the policy, or of the policy with `weights` put in for the play."""
    if weights is None:
        return " / ".join(map(str, played_endings(agent, episodes)))
    params = list(agent.policy.parameters())
    own = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, w in zip(params, weights):
            p.copy_(w)
        played = endings(agent, episodes)
        for p, w in zip(params, own):
            p.copy_(w)
    return played


def frozen(agent, state, replay: Replay, updates: int, every: int, episodes: int, ema: float) -> None:
    """Actor and critic updates with the world model fixed, printing where the evaluation episodes end
    (and, with `ema`, where those of an exponential average of the policy's weights end)."""
    agent.actor_optimizer.load_state_dict(state["actor_optimizer"])
    agent.critic_optimizer.load_state_dict(state["critic_optimizer"])
    agent.apply_rates()  # a --set actor_lr / critic_lr over the checkpoint's
    rng, counts = np.random.default_rng(0), UpdateCounts(world_model=0, actor=1, critic=1)
    average = [p.detach().clone() for p in agent.policy.parameters()] if ema else None
    title = f"off the track / pole fallen / to the limit ({episodes} episodes)"
    print(f"| updates | {title} | policy gains x, v / the pole angle's | critic's outward slope in x, v |"
          " at rest: logit difference, gains x, v / the pole angle's, x where it switches |"
          + (" the average's |" if ema else "") + "\n|---|---|---|---|---|" + ("---|" if ema else ""))

    def learned() -> str:  # what the policy and the critic hold about the centre, beside where they end
        gains, slopes = policy_gains(agent, replay), outward_slopes(agent, replay)
        b, g = at_centre(agent)
        return (f" {gains[0] / gains[2]:+.3f}, {gains[1] / gains[2]:+.3f} | {slopes[0]:+.2f}, {slopes[1]:+.2f} |"
                f" {b:+.2f}, {g[0] / g[2]:+.3f}, {g[1] / g[2]:+.3f}, {-b / g[0]:+.2f} |")

    start = endings(agent, episodes)  # the average starts as the policy itself
    print(f"| 0 | {start} |{learned()}" + (f" {start} |" if ema else ""))
    for k in tqdm(range(1, updates + 1), desc="frozen model", leave=False):
        agent.update(replay.sample(agent.cfg.batch_size, rng, agent.device), counts, 0.0)
        if average is not None:
            with torch.no_grad():
                for a, p in zip(average, agent.policy.parameters()):
                    a.lerp_(p, ema)
        if k % every == 0:
            tqdm.write(f"| {k:,} | {endings(agent, episodes)} |{learned()}" + (f" {endings(agent, episodes, average)} |" if ema else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="RUN_DIR or RUN_DIR:STEP")
    parser.add_argument("--players", action="store_true", help="the policy against the critic's lookahead controllers")
    parser.add_argument("--frozen", type=int, default=0, metavar="N", help="N actor and critic updates in the frozen model")
    parser.add_argument("--every", type=int, default=250, help="updates between plays with --frozen")
    parser.add_argument("--ema", type=float, default=0.0, metavar="RATE",
                        help="with --frozen, also play an exponential average of the policy's weights (RATE per update)")
    parser.add_argument("--torch-seed", type=int, default=0, help="imagination's draws in the frozen updates (they differ by seed)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="with --frozen, a setting for the updates (batch_size, horizon, actor_lr, critic_lr, ...)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.players:
        print("| run | player | mean return | returns | off the track |\n|---|---|---|---|---|")
    for spec in args.runs:
        run, _, step = spec.partition(":")
        torch.manual_seed(args.torch_seed)
        agent, state = load_run_agent(Path(run), int(step) if step else None)
        cfg = agent.cfg
        if args.frozen:
            for key, value in map(parse_override, args.set):
                object.__setattr__(cfg, key, getattr(type(cfg).model_validate({**cfg.model_dump(), key: value}), key))
            print(f"\n{Path(run).name} at env step {state['position']['env_step']:,}, frozen model {' '.join(args.set)}")
            frozen(agent, state, replay_of(agent, state), args.frozen, args.every, cfg.eval_episodes, args.ema)
            continue
        if args.players:
            for name, act in players(agent).items():
                episodes = play_episodes(act, cfg.env_spec, cfg.eval_episodes, cfg.seed)
                off = sum(e.terminated and abs(e.observations[-1][0]) > TRACK for e in episodes)
                print(f"| {Path(run).name} @ {state['position']['env_step']:,} | {name} | "
                      f"{np.mean([e.total for e in episodes]):.0f} | {[int(e.total) for e in episodes]} | {off} |", flush=True)
            continue
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
        gains = policy_gains(agent, replay_of(agent, state))
        print("\npolicy gains / the pole angle's: " + ", ".join(f"{n} {g / gains[2]:+.3f}" for n, g in zip(OBSERVATIONS, gains)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
