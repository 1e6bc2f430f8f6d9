"""ONNX export of the agent into a versioned bundle (format: `reverie/bundle.py`).

Each graph takes and returns float32 tensors with a dynamic batch dimension. Sampling stays
outside the graphs: the policy graph returns distribution parameters (logits, or mean and std
of the pre-tanh Normal), and the runtime samples from them.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from reverie.bundle import MAX_HORIZON, ActionSpace, GraphSpec, Manifest, ObservationSpace, graph_contract, publish
from reverie.runs import RunDir

from .agent import Agent

log = logging.getLogger("reverie.export")


class _OneInput(nn.Module):
    """A one-input function of the agent (encode, policy parameters, decode) as an exportable module."""

    def __init__(self, agent: Agent, fn):
        super().__init__()
        self.agent = agent  # registers the parameters the function uses
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class _Belief(nn.Module):
    """obs (and its history) -> belief: the encoder graph."""

    def __init__(self, agent: Agent):
        super().__init__()
        self.wm = agent.world_model

    def forward(self, obs, history_obs=None, history_action=None, history_mask=None):
        return self.wm.belief_after(obs, history_obs, history_action, history_mask)


class _WorldModelStep(nn.Module):
    """(state, agent action) -> one imagined step: the graph encodes the action itself
    (`WorldModel.encode_action`), so that encoding exists once, in the model. Transformer dynamics
    also read the rollout's earlier steps (past_state, past_action, past_mask)."""

    def __init__(self, agent: Agent):
        super().__init__()
        self.wm = agent.world_model

    def forward(self, state, action, past_state=None, past_action=None, past_mask=None):
        return self.wm.step(state, action, past_state, past_action, past_mask)


class _Act(nn.Module):
    """obs (and its history) -> policy parameters and value in one graph: what `POST /act` needs, in one call."""

    def __init__(self, agent: Agent):
        super().__init__()
        self.agent = agent

    def forward(self, obs, history_obs=None, history_action=None, history_mask=None):
        belief = self.agent.world_model.belief_after(obs, history_obs, history_action, history_mask)
        return (*self.agent.policy.params(belief), self.agent.critic_values(belief))


def graph_specs(agent: Agent) -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...], GraphSpec]]:
    """name -> (module, example inputs, spec): the graphs of the bundle.

    Their "state" is the agent's belief (`WorldModel.belief`); with a memory the encoder and act
    graphs read the observation's history too (`WorldModel.belief_after`), padded to history_length.
    """
    space, cfg = agent.space, agent.cfg
    obs, state = torch.zeros(2, *space.obs_shape), torch.zeros(2, cfg.belief_dim)

    def agent_actions(*lead: int) -> torch.Tensor:
        return torch.zeros(*lead, dtype=torch.int64) if space.discrete else torch.zeros(*lead, space.action_dim)

    length = cfg.history_length
    observed = (obs,) if not length else (obs, torch.zeros(2, length, *space.obs_shape), agent_actions(2, length),
                                          torch.ones(2, length, dtype=torch.bool))
    contract = graph_contract("discrete" if space.discrete else "box", length, agent.world_model.dynamics_context)
    steps = agent.world_model.dynamics_context
    past = () if not steps else (torch.zeros(2, steps, cfg.belief_dim), agent_actions(2, steps),
                                 torch.ones(2, steps, dtype=torch.bool))
    modules = {
        "encoder": (_Belief(agent), observed),
        "policy": (_OneInput(agent, agent.policy.params), (state,)),
        # The critic training's returns bootstrap from (the target critic, when on): /imagine ranks plans
        # as training valued them, and /value and /act answer with the same numbers.
        "value": (_OneInput(agent, agent.critic_values), (state,)),
        "world_model": (_WorldModelStep(agent), (state, agent_actions(2), *past)),
        "decoder": (_OneInput(agent, agent.world_model.decode), (state,)),
        "act": (_Act(agent), observed),
    }
    return {name: (*modules[name], spec) for name, spec in contract.items()}


def export_graph(module: nn.Module, inputs: tuple[torch.Tensor, ...], spec: GraphSpec, path: Path) -> None:
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # "torchvision is not installed"
    for chatty in ("onnx_ir", "onnxscript"):  # a line per optimisation pass
        logging.getLogger(chatty).setLevel(logging.WARNING)
    dynamic = {name: {0: "batch"} for name in spec.inputs + spec.outputs}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), inputs, str(path), input_names=spec.inputs, output_names=spec.outputs,
                          dynamic_axes=dynamic, dynamo=True, external_data=False, verbose=False)


def export_bundle(agent: Agent, export_dir: Path, training_step: int, phase: str, last_eval: float | None, keep: int) -> Path:
    """Write every graph into a staging folder inside `export_dir`, then publish it atomically."""
    export_dir = Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    if agent.device.type != "cpu":  # graphs are traced with CPU example inputs; training goes on untouched
        agent = copy.deepcopy(agent).cpu()
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=export_dir))
    specs = graph_specs(agent)
    for module, inputs, spec in specs.values():
        export_graph(module, inputs, spec, staging / spec.file)
    space, cfg = agent.space, agent.cfg
    action_space = (ActionSpace(kind="discrete", n=space.action_dim) if space.discrete else
                    ActionSpace(kind="box", shape=[space.action_dim], low=space.action_low.tolist(), high=space.action_high.tolist()))
    manifest = Manifest(
        model_version=0, training_step=training_step, phase=phase, env_id=cfg.env_id,
        world="env" if cfg.spaces is None else "client", obs_indices=cfg.obs_indices,
        pixels=cfg.pixels, image_size=cfg.image_size, action_repeat=cfg.env_spec.repeat,
        observation_space=ObservationSpace(shape=list(space.obs_shape), dtype="uint8" if space.is_image else "float32"),
        action_space=action_space, state_size=cfg.belief_dim, history_length=cfg.history_length,
        dynamics_context=agent.world_model.dynamics_context, dynamics_std=agent.world_model.sample_std,
        state_dim=cfg.state_dim, gamma=cfg.gamma, lambda_=cfg.lambda_,
        default_horizon=cfg.horizon, max_horizon=MAX_HORIZON, last_eval_return=last_eval,
        seed=cfg.seed, eval_episodes=cfg.eval_episodes,
        graphs={name: spec for name, (_, _, spec) in specs.items()},
    )
    final = publish(export_dir, staging, manifest, keep, cfg.promotion_tolerance)
    log.info("exported %s (env step %d)", final, training_step)
    return final


def export_run(run_dir: Path) -> Path:
    """`reverie export`: publish a bundle from the newest checkpoint of a run directory."""
    from .checkpoint import load_run_agent
    from .schedule import Schedule

    agent, state = load_run_agent(run_dir)
    step = state["position"]["env_step"]
    return export_bundle(agent, RunDir(run_dir).export, step, Schedule(agent.cfg).phase(step).value,
                         state["position"]["last_eval"], agent.cfg.export_keep)
