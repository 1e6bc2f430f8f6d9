"""One loaded bundle: act, value and imagine on numpy arrays, for every front end.

The graphs return distribution parameters; sampling happens here, from a numpy generator
seeded per request, so a `seed` reproduces an answer exactly. Actions leave in the form the env
takes (an int for Discrete, floats within the Box bounds) and enter the world-model graph in the
agent's form (an int64 index, or a float32 vector in [-1, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from reverie.actions import ActionCoding
from reverie.bundle import POLICY_OUTPUTS, BundleError, Manifest, load_manifest
from reverie.returns import lambda_return

from reverie.errors import InputError


# The graphs' history inputs for a batch (bundle.graph_contract): observations [B, L, *obs], agent actions
# [B, L] or [B, L, dim], and the mask [B, L] of real steps, L being the manifest's history_length.
HistoryInputs = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class ActResult:
    """An act's answer for each observation. The fields that default to None are its details
    (`ACT_DETAILS`): optional arrays, one row per observation, that both front ends pass on by name,
    so a new one is declared here, in the REST schema and in the proto, and nowhere else."""

    actions: list  # env form, one per observation
    agent_actions: np.ndarray  # the same in agent form (what a history records)
    values: np.ndarray  # [B]
    probs: np.ndarray | None = None  # [B, n] for Discrete
    mean: np.ndarray | None = None  # [B, dim] of the pre-tanh Normal, for Box
    std: np.ndarray | None = None


ACT_DETAILS = tuple(f.name for f in fields(ActResult) if f.default is None)


@dataclass
class Imagination:
    """`samples` imagined trajectories of `horizon` steps from one observation."""

    states: np.ndarray  # [S, H + 1, state_size]
    actions: list  # S lists of H env-form actions
    rewards: np.ndarray  # [S, H]
    continues: np.ndarray  # [S, H]
    values: np.ndarray  # [S, H + 1]
    lambda_return: np.ndarray  # [S, H]; lambda_return[:, 0] is the value of the whole rollout
    disagreement: np.ndarray  # [S, H]: the dynamics ensemble's doubt about each imagined state (0: one member)

    @property
    def horizon(self) -> int:
        return self.rewards.shape[1]


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # tiny graphs: threads cost more than they give, and requests run in parallel
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Runtime:
    def __init__(self, bundle: Path, manifest: Manifest):
        self.bundle = bundle
        self.manifest = manifest
        self.version = manifest.model_version
        space = manifest.action_space
        self.discrete = space.kind == "discrete"
        self.action_dim = space.n if self.discrete else space.shape[0]
        self.history_length = manifest.history_length
        self.coding = ActionCoding(self.discrete, space.low, space.high)
        try:
            self.sessions = {name: _session(bundle / spec.file) for name, spec in manifest.graphs.items()}
        except Exception as err:  # onnxruntime raises its own exception types for truncated or invalid graphs
            raise BundleError(f"{bundle}: onnxruntime cannot load it: {err}") from err
        self.outputs = {name: spec.outputs for name, spec in manifest.graphs.items()}
        self.inputs = {name: spec.inputs for name, spec in manifest.graphs.items()}
        # Where act's outputs are, by the bundle format's names: looked up once, not per request.
        self._act_params = [self.outputs["act"].index(n) for n in POLICY_OUTPUTS[space.kind]]
        self._act_value = self.outputs["act"].index("value")
        # Unseeded requests draw from one long-lived generator (numpy's are thread-safe): a fresh
        # one per call costs more OS entropy and setup than the sampling itself.
        self.rng = np.random.default_rng()

    @classmethod
    def load(cls, bundle: Path) -> "Runtime":
        """Verify checksums, open every graph and run each once; raises BundleError if any of it fails."""
        runtime = cls(Path(bundle), load_manifest(Path(bundle)))
        runtime.warm_up()
        return runtime

    def warm_up(self) -> None:
        """Run every graph once, the fused act graph included: a bundle any of them fails on is refused."""
        obs = np.zeros((1, *self.manifest.observation_space.shape), np.float32)
        length = self.history_length
        full = self.history(np.zeros((length, *obs.shape[1:]), np.float32),  # every history input, all of it real
                            np.zeros(length, np.int64) if self.discrete else np.zeros((length, self.action_dim), np.float32))
        try:
            self.act(obs, deterministic=False, seed=0)
            self.act(obs, deterministic=False, seed=0, history=full)
            self.imagine(obs, horizon=2, samples=2, deterministic=False, seed=0)
            self.decode(self.encode(obs))
        except Exception as err:
            raise BundleError(f"{self.bundle}: warm-up failed: {err}") from err

    # ------------------------------------------------------------------ graphs
    def _run(self, graph: str, *inputs: np.ndarray) -> list[np.ndarray]:
        return self.sessions[graph].run(self.outputs[graph], dict(zip(self.inputs[graph], inputs)))

    def history(self, observations: Sequence[np.ndarray], actions: Sequence) -> HistoryInputs | None:
        """One observation's history, n <= history_length steps (observations, agent actions), oldest
        first, as the graphs take it: padded to history_length. None for a bundle without memory."""
        if not self.history_length:
            return None
        n, length = len(observations), self.history_length
        obs = np.zeros((1, length, *self.manifest.observation_space.shape), np.float32)
        action = np.zeros((1, length) if self.discrete else (1, length, self.action_dim), np.int64 if self.discrete else np.float32)
        mask = np.zeros((1, length), bool)
        if n:
            obs[0, :n], action[0, :n], mask[0, :n] = np.asarray(observations), np.asarray(actions), True
        return obs, action, mask

    def _past(self, states: list[np.ndarray], actions: list[np.ndarray], rows: int) -> list[np.ndarray]:
        """The world-model graph's view of a rollout's earlier steps (transformer dynamics only): the last
        dynamics_context (state, agent action) pairs, padded, with their mask."""
        length = self.manifest.dynamics_context
        if not length:
            return []
        states, actions = states[-length:], actions[-length:]
        n = len(states)
        past_state = np.zeros((rows, length, self.manifest.state_size), np.float32)
        past_action = np.zeros((rows, length) if self.discrete else (rows, length, self.action_dim),
                               np.int64 if self.discrete else np.float32)
        mask = np.zeros((rows, length), bool)
        if n:
            past_state[:, :n], past_action[:, :n], mask[:, :n] = np.stack(states, 1), np.stack(actions, 1), True
        return [past_state, past_action, mask]

    def _observed(self, obs: np.ndarray, history: HistoryInputs | None) -> list[np.ndarray]:
        """The inputs of a graph that reads observations: with a memory, a history for each row (none: empty)."""
        if not self.history_length:
            return [obs]
        if history is None:
            empty = self.history((), ())
            history = tuple(np.repeat(part, len(obs), axis=0) for part in empty)
        return [obs, *history]

    def encode(self, obs: np.ndarray, history: HistoryInputs | None = None) -> np.ndarray:
        return self._run("encoder", *self._observed(obs, history))[0]

    def values_of(self, states: np.ndarray) -> np.ndarray:
        return self._run("value", states)[0].reshape(-1)

    def decode(self, states: np.ndarray) -> np.ndarray:
        return self._run("decoder", states)[0]

    # ------------------------------------------------------------------ actions
    def _distribution(self, params: list[np.ndarray]) -> dict[str, np.ndarray]:
        """What clients see of the policy: `probs` (Discrete) or the pre-tanh Normal's `mean` and `std` (Box)."""
        if self.discrete:
            probs = params[0] - params[0].max(-1, keepdims=True)  # softmax in place: on the hot path, allocations count
            np.exp(probs, out=probs)
            probs /= probs.sum(-1, keepdims=True)
            return {"probs": probs}
        mean, std = params
        return {"mean": mean, "std": std}

    def _greedy(self, params: list[np.ndarray]) -> np.ndarray:
        """Deterministic agent actions: the most probable index, or tanh of the mean."""
        return params[0].argmax(-1) if self.discrete else np.tanh(params[0])

    def _draw(self, distribution: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """Sampled agent actions ([B] indices or [B, dim] in [-1, 1])."""
        if self.discrete:  # inverse-CDF sampling, one uniform per row
            probs = distribution["probs"]
            u = rng.random((len(probs), 1))
            return np.minimum((probs.cumsum(-1) < u).sum(-1), self.action_dim - 1)
        mean, std = distribution["mean"], distribution["std"]
        return np.tanh(mean + std * rng.standard_normal(mean.shape).astype(np.float32))

    def _sample(self, params: list[np.ndarray], deterministic: bool, seed) -> np.ndarray:
        """Agent actions from distribution parameters. `seed` is an int, None (the runtime's own unseeded
        generator) or a Generator shared across the steps of a rollout."""
        return self._greedy(params) if deterministic else self._draw(self._distribution(params), self._generator(seed))

    def _generator(self, seed) -> np.random.Generator:
        if isinstance(seed, np.random.Generator):
            return seed
        return self.rng if seed is None else np.random.default_rng(seed)

    def to_env(self, actions: np.ndarray) -> list:
        return self.coding.to_env(actions).tolist()

    @staticmethod
    def _finite(field: str, *arrays: np.ndarray) -> None:
        for array in arrays:
            if not np.isfinite(array).all():
                raise InputError(field, "the model's output is not finite for this input")

    def act(self, obs: np.ndarray, deterministic: bool, seed: int | None, history: HistoryInputs | None = None) -> ActResult:
        result = self.act_many([(obs, deterministic, seed, history)])[0]
        if isinstance(result, InputError):
            raise result
        return result

    def act_many(self, requests: list[tuple[np.ndarray, bool, int | None, HistoryInputs | None]]) -> list[ActResult | InputError]:
        """Several requests' (obs batch, deterministic, seed, history) answered from one call of the act
        graph (encoder, policy and value fused). Rows are independent in the graph, each request samples
        with its own seed, and a non-finite output fails only the request it belongs to."""
        if len(requests) == 1:
            inputs = self._observed(requests[0][0], requests[0][3])
        else:
            inputs = [np.concatenate(parts) for parts in zip(*(self._observed(r[0], r[3]) for r in requests))]
        out = self._run("act", *inputs)
        params, values = [out[i] for i in self._act_params], out[self._act_value].reshape(-1)
        distribution = self._distribution(params)
        results, lo = [], 0
        for batch, deterministic, seed, _ in requests:
            rows = slice(lo, lo + len(batch))
            results.append(self._answer([p[rows] for p in params], values[rows],
                                        {name: array[rows] for name, array in distribution.items()}, deterministic, seed))
            lo = rows.stop
        return results

    def _answer(self, params: list[np.ndarray], values: np.ndarray, distribution: dict[str, np.ndarray],
                deterministic: bool, seed: int | None) -> ActResult | InputError:
        try:
            self._finite("obs", values, *params)  # finite logits make finite probabilities
        except InputError as err:
            return err
        actions = self._greedy(params) if deterministic else self._draw(distribution, self._generator(seed))
        return ActResult(self.to_env(actions), actions, values, **distribution)

    def value(self, obs: np.ndarray, history: HistoryInputs | None = None) -> np.ndarray:
        values = self.values_of(self.encode(obs, history))
        self._finite("obs", values)
        return values

    def imagine(self, obs: np.ndarray, horizon: int, samples: int, deterministic: bool, seed: int | None,
                plan: np.ndarray | None = None, history: HistoryInputs | None = None) -> Imagination:
        """Roll policy (or `plan`, agent-form actions [H, ...]) and world model from one observation
        (after its `history`, with a memory).

        All samples move together: one policy and one world-model call per step. Unless
        `deterministic`, a bundle trained to sample its next states (manifest `dynamics_std`) draws
        them here too, so the samples differ by the model's noise as well as the policy's (the graph
        gives each step's continue probability at the mean next state).
        """
        rng = self._generator(seed)
        noise = 0.0 if deterministic else self.manifest.dynamics_std
        noisy = slice(0, self.manifest.state_dim)  # the state; a memory after it is not drawn
        state = np.repeat(self.encode(obs[:1], history), samples, axis=0)
        states, actions, rewards, continues, doubts = [state], [], [], [], []
        for t in range(horizon):
            if plan is None:
                action = self._sample(self._run("policy", state), deterministic, rng)
            else:
                action = np.repeat(plan[t:t + 1], samples, axis=0)
            state, reward, cont, doubt = self._run("world_model", state, action, *self._past(states[:-1], actions, samples))
            if noise:
                state[:, noisy] += noise * rng.standard_normal(state[:, noisy].shape, dtype=state.dtype)
            doubts.append(doubt.reshape(-1))
            states.append(state)
            actions.append(action)
            rewards.append(reward.reshape(-1))
            continues.append(cont.reshape(-1))
        states = np.stack(states, 1)
        values = self.values_of(states.reshape(-1, states.shape[-1])).reshape(samples, horizon + 1)
        rewards, continues = np.stack(rewards, 1), np.stack(continues, 1)
        self._finite("obs", states, rewards, continues, values)
        returns = lambda_return(rewards, continues, values, self.manifest.gamma, self.manifest.lambda_)
        per_sample = [self.to_env(np.asarray([a[i] for a in actions])) for i in range(samples)]
        return Imagination(states, per_sample, rewards, continues, values, returns, np.stack(doubts, 1))
