"""One source of defaults for the trainer; presets are small named overrides of it.

Every knob the seed names (sizes, learning rates, schedule boundaries, the remedies of
diagram 6) lives here, so a run is fully described by one `Config` saved beside it. Where our
default differs from a value the seed states, the field says so (`seed_value`): the `seed`
preset, `reverie config` and the table of departures in docs/learning.md are all read from those notes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from reverie.bundle import WorldSpaces
from reverie.envs import EnvSpec

FRAME_REPLAY_CAPACITY = 100_000  # the replay's default with frames: 2.1 GB at 84x84x3
# The defaults of a run on frames (`Config._frame_defaults` says why); `reverie config` names them so.
FRAME_DEFAULTS = {"sequence_mode": True, "replay_capacity": FRAME_REPLAY_CAPACITY, "checkpoint_replay": False,
                  "replay_ratio": 0.25, "eval_every": 2500, "export_every": 5000, "symlog": True}


class UpdateCounts(BaseModel):
    """Diagram 5's multi-update schedule: from `from_step` on, updates per batch for each optimizer."""

    model_config = ConfigDict(extra="forbid")

    from_step: int = Field(0, ge=0)
    world_model: int = Field(1, ge=0)
    actor: int = Field(1, ge=0)
    critic: int = Field(1, ge=0)


def seed_value(value: Any, why: str) -> dict[str, Any]:
    """Marks a default that departs from a value the seed states: the seed's value, and why ours differs."""
    return {"seed": value, "why": why}


SEED_SCHEDULE = [{"from_step": 0, "world_model": 2, "actor": 1, "critic": 1},
                 {"from_step": 50_000, "world_model": 1, "actor": 2, "critic": 2}]


@dataclass(frozen=True)
class Sizes:
    """The model sizes block (diagram 1), what every component is shaped by: with `belief_dim`, the width
    the heads read (the state, and a memory beside it), and `context`, the longest sequence a
    transformer attends over (sequence_length)."""

    feature_dim: int
    state_dim: int
    hidden_dim: int
    hidden_layers: int
    cnn_depth: int
    transformer_layers: int
    attention_heads: int
    belief_dim: int
    context: int


class Config(BaseModel):
    """The trainer's whole configuration. Field names are the keys of `--set key=value`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # run
    env_id: str = Field("CartPole-v1", description="gymnasium env id; with `spaces`, the world's name (no env is made)")
    spaces: WorldSpaces | None = Field(None, description="the spaces of a world that lives at the client (`--spaces FILE`): "
                                       "no gymnasium env anywhere; learns from the clients and is evaluated by their evaluation sessions")
    obs_indices: list[int] | None = Field(None, description="keep only these entries of a vector observation "
                                          "(e.g. [0,2]: CartPole without its velocities); the bundle and the service see the kept ones")
    pixels: bool = Field(False, description="the agent sees the env's rendered rgb_array frames, image_size x image_size x 3 uint8 "
                         "(ALE/ games always do); with frames, sequence_mode and a 100k replay are the defaults")
    image_size: int = Field(84, ge=16, description="height and width of frames (the seed's 84; 64 is quicker)")
    action_repeat: int | None = Field(None, ge=1, description="env steps each action is held for (None: 4 for Atari, "
                                      "2 for other frames, 1 for vectors); the trainer counts agent steps")
    seed: int = Field(0, description="seeds torch, numpy, the env resets and the exploration draws")
    total_steps: int = Field(50_000, ge=1, description="env steps to train for")
    source: Literal["env", "clients", "both"] = Field(
        "env", description="where the replay's experience comes from: the trainer's own env, the served clients' "
        "experience log (the env only evaluates), or both; total_steps and every cadence count transitions from either")
    experience: str | None = Field(None, description="the experience log that source=clients|both tails: a folder, or "
                                   "redis://HOST:PORT[/DB][?stream=NAME] (None: RUN_DIR/experience, where `reverie up` has the server write it)")
    max_policy_lag: int | None = Field(10, ge=0, description="client steps chosen by a model more than this many "
                                       "exported versions older than BEST (the newest, while there is no BEST) are dropped, "
                                       "not learned from (None: keep all)")
    client_backlog: int = Field(256, ge=1, description="clients faster than the trainer learns: past this many client steps "
                                "read and waiting, each is stored without its updates (every step is kept in the replay, the "
                                "updates per step fall; counted as client_steps_unpaid), so the trainer stays this close to play")
    idle_replay_ratio: float = Field(8.0, gt=0, description="clients slower than the trainer learns: while no client step "
                                     "waits, it goes on updating from its replay up to this many update rounds per stored step")
    client_run_steps: int = Field(64, ge=1, description="an unfinished client episode's steps reach the replay in runs of "
                                  "this many (each cut stored as a truncation), so long episodes are learned from before they end")
    threads: int = Field(2, ge=1, description="torch intra-op threads")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                        description="where the networks train: auto takes CUDA when there is one, else the CPU")

    # component sizes (diagram 1)
    feature_dim: int = Field(256, ge=1, description="encoder output size (the seed's features [256])")
    state_dim: int = Field(64, ge=1, description="learned state size (the seed's states [64])")
    hidden_dim: int = Field(128, ge=1, description="width of every hidden layer")
    hidden_layers: int = Field(2, ge=1, description="hidden layers per MLP")
    cnn_depth: int = Field(32, ge=1, description="channels of the first CNN layer (image observations)")
    dynamics: Literal["mlp", "transformer"] = Field("mlp", description="the dynamics members: an MLP of (state, action), "
                                                     "or a transformer attending causally over the sequence context (single-step without one)")
    transformer_layers: int = Field(1, ge=1, description="attention blocks of each transformer dynamics member")
    attention_heads: int = Field(4, ge=1, description="heads of each attention block (hidden_dim must divide by it)")

    # sequences (diagram 4)
    sequence_mode: bool = Field(False, description="train on sequences of sequence_length steps "
                                "(batch_size // sequence_length of them per batch) with their sequence context, not flat transitions")
    sequence_length: int = Field(16, ge=1, description="steps per sampled sequence; also the longest context a transformer attends over")
    memory: Literal["gru", "none"] = Field("gru", description="sequence mode's memory: gru (ours) joins each state with a "
                                           "recurrent memory of the episode's past states and actions; none is the seed's sequence "
                                           "mode as drawn: states alone, the context read only by transformer dynamics (an MLP ignores it)",
                                           json_schema_extra=seed_value("none", "an MLP policy and critic can then act on what the "
                                                                        "episode showed before, e.g. velocities hidden from one observation"))
    memory_dim: int = Field(64, ge=1, description="size of the recurrent memory of past states and actions that, in "
                            "sequence mode with memory=gru, joins each state (the agent's belief: what it sees, and what it remembers)")

    # world model (diagram 2)
    dynamics_weight: float = Field(1.0, ge=0, description="weight of the dynamics MSE in the world-model loss")
    reward_weight: float = Field(1.0, ge=0, description="weight of the reward NLL")
    continue_weight: float = Field(1.0, ge=0, description="weight of the continue BCE")
    decoder_weight: float = Field(1.0, ge=0, description="weight of the decoder MSE")
    dynamics_std: float = Field(0.1, gt=0, description="std of the next-state Normal: fixed, as the dynamics loss is its NLL at a "
                                "fixed scale (an MSE); what imagination samples with when dynamics_sample is on")
    dynamics_sample: bool = Field(False, description="imagination samples each next state from the dynamics' Normal "
                                  "(reparameterised, so the actor's gradient still flows), not its mean: rollouts carry model noise",
                                  json_schema_extra=seed_value(True, "the mean is what the ensemble votes for; sampling learned sooner on "
                                                               "2 of 5 CartPole seeds and held worse on all (docs/results.md)"))
    world_model_lr: float = Field(1e-3, gt=0, description="world-model optimizer learning rate", json_schema_extra=seed_value(
        1e-4, "the seed's failure-1 remedy raises 1e-4 to 1e-3 when the world model learns too slowly; small budgets start there"))
    symlog: bool = Field(False, description="reward and value heads predict in symlog space (a frames default: "
                         "frames were measured with it)")

    # imagination, actor, critic (diagrams 2 and 3)
    horizon: int = Field(15, ge=1, description="imagination steps (the seed's 15)")
    gamma: float = Field(0.99, gt=0, le=1, description="discount")
    lambda_: float = Field(0.95, ge=0, le=1, description="lambda of the lambda-returns")
    actor_lr: float = Field(3e-4, gt=0, description="actor optimizer learning rate", json_schema_extra=seed_value(
        3e-5, "returns are normalised to order 1 (return_norm), so the seed's rate, set for raw returns, would move the policy 10x slower"))
    critic_lr: float = Field(3e-4, gt=0, description="critic optimizer learning rate", json_schema_extra=seed_value(
        3e-5, "the critic must follow a policy that changes at actor_lr"))
    logit_penalty: float = Field(0.0, ge=0, description="weight of the mean squared centred logit of a discrete policy in the "
                                 "actor loss: where no action is better (a balanced cart at rest) nothing else stops the logits "
                                 "drifting, since a saturated policy's entropy has no gradient")
    entropy_coef: float = Field(3e-4, ge=0, description="weight of the entropy bonus in the actor loss", json_schema_extra=seed_value(
        0.01, "returns are divided by their spread (return_norm), so the bonus is relative to returns of order 1"))
    return_norm: bool = Field(True, description="scale actor returns by their 5-95 percentile spread", json_schema_extra=seed_value(
        False, "one entropy_coef and one actor_lr for envs whose returns differ by orders of magnitude"))
    grad_clip: float = Field(1.0, gt=0, description="max gradient norm of each optimizer (the seed's 1.0)")
    actor_gradient: Literal["dynamics", "reinforce", "all_actions"] = Field(
        "dynamics", description="how the actor's loss reaches the policy: back through the learned dynamics (the seed's "
        "diagram 2; straight-through for discrete actions), by the likelihood ratio of its own imagined actions "
        "(REINFORCE with the critic as baseline: no gradient through the rollout, failure 3's explosion cannot happen), "
        "or, for discrete actions, by every action's one-step value through the model at each imagined state "
        "(sum over a of pi(a|s) Q(s, a): no sampling noise, no straight-through bias)")
    actor_grad_normalize: bool = Field(False, description="rescale every actor gradient to norm grad_clip: its direction, not its size (failure 3, remedy 4)")
    batch_size: int = Field(128, ge=1, description="transitions per update batch", json_schema_extra=seed_value(
        64, "the seed's [64, 4] is an example of a flat batch, not a setting; 128 imagination starts per update"))

    # schedule (diagram 5)
    warmup_steps: int = Field(1000, ge=0, description="env steps of world-model-only training and random actions",
                              json_schema_extra=seed_value(5000, "5k random steps would spend more than the whole 2k-step budget CartPole needs"))
    transition_steps: int = Field(1000, ge=0, description="env steps over which critic_real_mix goes 1.0 -> critic_real_mix_final",
                                  json_schema_extra=seed_value(5000, "as warmup_steps: the seed's boundaries suit budgets of 100k steps"))
    critic_real_mix_final: float = Field(0.0, ge=0, le=1, description="weight of real targets in the critic's loss after the transition")
    critic_real_length: int = Field(1, ge=1, le=64, description="replayed steps behind each real critic target: 1, one-step targets "
                                    "from the update's batch; more, lambda-returns over that many consecutive replayed steps "
                                    "(DreamerV3's replay value loss: a real ending reaches the states before it in one update), "
                                    "from batch_size // critic_real_length extra sequences")
    replay_ratio: float = Field(2.0, gt=0, description="update rounds per env step")
    learning_starts: int = Field(128, ge=1, description="env steps before the first update")
    update_schedule: list[UpdateCounts] = Field(
        default_factory=lambda: [UpdateCounts()],
        description="updates per batch for world model, actor and critic, by env step (diagram 5's multi-update schedule)",
        json_schema_extra=seed_value(SEED_SCHEDULE, "replay_ratio 2 already gives the world model two updates per env step; the seed's 2/1/1 would double its cost"))

    # remedies of diagram 6
    orthogonal_init: bool = Field(True, description="orthogonal weights, zero biases (failure 1, remedy 4)")
    obs_norm: bool = Field(True, description="running observation normalisation inside the encoder (failure 1, remedy 3)")
    dynamics_ensemble: int = Field(1, ge=1, description="dynamics members voting by their mean (failure 2, remedy 4)")
    world_model_weight_decay: float = Field(0.0, ge=0, description="decoupled weight decay of the world model (failure 2, remedy 3)")
    target_critic: bool = Field(True, description="bootstrap from a slow EMA copy of the critic (failure 4, remedy 2)")
    target_critic_tau: float = Field(0.02, gt=0, le=1, description="EMA rate of the target critic")
    critic_target_clip: float | None = Field(None, gt=0, description="clip critic targets to +-this (failure 4, remedy 3)")
    return_bounds: bool = Field(True, description="hold returns and bootstrap values inside what the rewards seen allow")
    adaptive_entropy: bool = Field(False, description="tune the entropy weight toward target_entropy (failure 5, remedy 4)")
    target_entropy: float | None = Field(None, description="entropy the adaptive weight aims at (default: half the max, or -action_dim)")
    epsilon: float = Field(0.0, ge=0, le=1, description="epsilon-greedy exploration after warmup (failure 5, remedy 3)")

    # replay, logging, evaluation, checkpoints
    replay_capacity: int = Field(1_000_000, ge=2, description="observations kept in replay: one per step, and each "
                                 "episode's last one (each frame once); refused at start when it would not fit in memory")
    recent_share: float = Field(0.0, ge=0, le=1, description="share of every batch drawn from the newest recent_window steps "
                                "(the rest uniformly from the whole replay): the current policy's own states, and where it "
                                "fails, in every update; 0: uniform")
    recent_window: int = Field(1000, ge=1, description="the newest steps recent_share draws from")
    continue_endings: float = Field(0.0, ge=0, lt=1, description="the least share of episode endings the continue head sees per batch: "
                                    "when the replay holds fewer, extra ones are drawn for it alone, logit-adjusted (its rare class); 0: off")
    continue_endings_adjusted: bool = Field(True, description="the extra endings' logits adjusted back to the replay's odds; "
                                            "false: the head learns the enriched odds, reading states near an ending as "
                                            "likelier endings (a pessimistic head: imagination keeps further from them)")
    log_every: int = Field(250, ge=1, description="env steps between metric rows")
    eval_every: int = Field(500, ge=1, description="env steps between evaluations")
    eval_episodes: int = Field(10, ge=1, description="deterministic episodes per evaluation")
    client_eval_episodes: int = Field(3, ge=1, description="a world given by its spaces: the evaluation sessions' episodes "
                                      "of one model version whose mean return is that version's evaluation (its first ones)")
    solved_return: float | None = Field(None, description="eval return at which the env counts as solved, for the diagnostics "
                                        "(default: the env's reward_threshold; Pendulum-v1 and most custom envs have none)")
    target_return: float | None = Field(None, description="stop once an evaluation reaches this return")
    checkpoint_every: int = Field(2500, ge=1, description="env steps between checkpoints")
    checkpoint_replay: bool = Field(True, description="keep the replay in checkpoints (exact resume; with frames off by "
                                    "default: 21 KB per stored 84x84x3 frame, 2 GB per checkpoint at 100k)")
    export_every: int = Field(1000, ge=1, description="env steps between ONNX bundle exports")
    export_keep: int = Field(5, ge=1, description="bundle versions kept (plus the best)")
    promotion_tolerance: float = Field(0.05, ge=0, description="BEST (what `reverie up` serves) moves to a newer version "
                                       "whose evaluation is within this fraction of |the best evaluation so far| below it")
    diagnostics_window: int = Field(4, ge=3, description="evaluations the failure-mode detectors look back over, "
                                    "with the metric rows between them (at most 64 rows)")

    @property
    def sequences_per_batch(self) -> int:
        """Sequence mode's runs per batch: about batch_size steps in all."""
        return max(1, self.batch_size // self.sequence_length)

    @property
    def history_length(self) -> int:
        """The most past steps a memory reads (see `WorldModel.recall`); 0 without one."""
        return self.sequence_length - 1 if self.remembers else 0

    @property
    def remembers(self) -> bool:
        """Whether the agent has a memory: sequence mode with memory=gru."""
        return self.sequence_mode and self.memory == "gru"

    @property
    def belief_dim(self) -> int:
        """What the heads read: the state, and with a memory the memory beside it."""
        return self.state_dim + (self.memory_dim if self.remembers else 0)

    @property
    def sizes(self) -> Sizes:
        return Sizes(self.feature_dim, self.state_dim, self.hidden_dim, self.hidden_layers, self.cnn_depth,
                     self.transformer_layers, self.attention_heads, self.belief_dim, self.sequence_length)

    @property
    def env_spec(self) -> EnvSpec:
        return EnvSpec.of(self)

    @property
    def frames(self) -> bool:
        """Whether the agent sees images (an env's frames, or a client world's uint8 observations)."""
        return self.spaces.frames if self.spaces is not None else self.env_spec.frames

    @model_validator(mode="after")
    def _client_world(self) -> "Config":
        """A world with declared spaces has no env: its experience and evaluations come from the clients."""
        if self.spaces is None:
            return self
        if "env_id" in self.model_fields_set and self.env_id != self.spaces.name:
            raise ValueError(f"give an env ({self.env_id!r}) or a spaces file, not both")
        if self.source != "clients" and "source" in self.model_fields_set:
            raise ValueError(f"source={self.source}: a world given by its spaces has no env; it learns from the clients")
        if self.pixels or self.obs_indices is not None:
            raise ValueError("pixels and obs_indices change an env's observations; a spaces file states them as they are")
        object.__setattr__(self, "env_id", self.spaces.name)
        object.__setattr__(self, "source", "clients")
        return self

    @model_validator(mode="after")
    def _frame_defaults(self) -> "Config":
        """Frames hide velocities (memory: sequence mode), cost 21 KB each (a 100k-frame replay, 2 GB,
        kept out of checkpoints) and make an update ~4x a vector one's (228 ms on 2 CPU cores): a
        quarter of an update round per env step, and evaluations and exports every 2,500 and 5,000
        steps, keep a CPU run near 9 env steps/s. Symlog stays on for frames: every frame result was
        measured with it, and raw returns were measured on vectors only. What the run set itself stays."""
        if self.frames:
            for key, value in FRAME_DEFAULTS.items():
                if key not in self.model_fields_set:
                    object.__setattr__(self, key, value)  # no re-validation loop
        return self

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "Config":
        if self.dynamics == "transformer" and self.hidden_dim % self.attention_heads:
            raise ValueError(f"hidden_dim {self.hidden_dim} is not divisible by attention_heads {self.attention_heads}")
        return self

    @field_validator("update_schedule")
    @classmethod
    def _sorted_from_zero(cls, value: list[UpdateCounts]) -> list[UpdateCounts]:
        if not value or value[0].from_step != 0:
            raise ValueError("update_schedule must start with an entry at from_step 0")
        if any(b.from_step <= a.from_step for a, b in zip(value, value[1:])):
            raise ValueError("update_schedule entries must have increasing from_step")
        return value


# What a resumed run cannot change: the env and what it shows, the networks' shapes and parameter groups, the replay's size.
FIXED_ON_RESUME = ("env_id", "spaces", "obs_indices", "pixels", "image_size", "action_repeat", "feature_dim", "state_dim", "hidden_dim", "hidden_layers", "cnn_depth",
                   "dynamics", "transformer_layers", "attention_heads", "sequence_length", "sequence_mode", "memory", "memory_dim",
                   "dynamics_ensemble",
                   "adaptive_entropy", "replay_capacity")


# The config's blocks, in the order `reverie config` prints them: what each part of the system reads.
BLOCKS: dict[str, tuple[str, ...]] = {
    "run": ("env_id", "spaces", "obs_indices", "pixels", "image_size", "action_repeat", "seed", "total_steps", "threads",
            "device"),
    "clients": ("source", "experience", "max_policy_lag", "client_backlog", "idle_replay_ratio", "client_run_steps",
                "client_eval_episodes"),
    "model sizes (diagram 1)": ("feature_dim", "state_dim", "hidden_dim", "hidden_layers", "cnn_depth", "dynamics",
                                "transformer_layers", "attention_heads"),
    "sequences and memory (diagram 4)": ("sequence_mode", "sequence_length", "memory", "memory_dim"),
    "world model (diagram 2)": ("dynamics_weight", "reward_weight", "continue_weight", "decoder_weight", "dynamics_std",
                                "dynamics_sample", "world_model_lr", "symlog", "continue_endings", "continue_endings_adjusted"),
    "actor and critic (diagrams 2 and 3)": ("horizon", "gamma", "lambda_", "actor_lr", "critic_lr", "entropy_coef", "logit_penalty",
                                            "return_norm", "grad_clip", "actor_gradient", "actor_grad_normalize",
                                            "batch_size"),
    "schedule (diagram 5)": ("warmup_steps", "transition_steps", "critic_real_mix_final", "critic_real_length",
                             "replay_ratio", "learning_starts", "update_schedule"),
    "remedies (diagram 6)": ("orthogonal_init", "obs_norm", "dynamics_ensemble", "world_model_weight_decay",
                             "target_critic", "target_critic_tau", "critic_target_clip", "return_bounds",
                             "adaptive_entropy", "target_entropy", "epsilon"),
    "replay": ("replay_capacity", "checkpoint_replay", "recent_share", "recent_window"),
    "evaluation and diagnostics": ("log_every", "eval_every", "eval_episodes", "solved_return", "target_return",
                                   "diagnostics_window"),
    "checkpoints and export": ("checkpoint_every", "export_every", "export_keep", "promotion_tolerance"),
}


# Departures from the seed that are no single default's value: (the seed, ours, why). The table of
# departures in docs/learning.md lists these beside seed_deviations(); a test keeps both complete.
STRUCTURAL_DEPARTURES: dict[str, tuple[str, str, str]] = {
    "dynamics target": ("the encoded next state", "the stop-gradient encoded next state",
                        "the encoder cannot make the dynamics loss trivially small by moving its own target (collapse)"),
    "reward head": ("reward(state)", "reward(state, action)", "a transition's reward may depend on its action (Pendulum's torque cost)"),
    "continue head": ("continue(state_t)", "continue(state_t+1): the state the step reached",
                      "an ending is a property of where a step lands; the critic's lambda-returns read it there"),
    "imagination losses": ("plain means over the imagined steps", "each imagined step weighted by the product of the "
                           "continue probabilities before it; actor returns divided by return_scale",
                           "steps after a likely ending count for less; one entropy_coef for returns of any size"),
    "critic": ("one critic bootstrapping from itself", "bootstraps from a target critic (target_critic, EMA tau 0.02) and "
               "answers inside the return bounds (return_bounds); the bundle serves that critic",
               "the seed's failure-4 remedies, on from the start: values stay inside what the rewards allow"),
    "remedies on from the start": ("obs_norm, orthogonal_init off until failure 1", "on",
                                   "cheap, and both help every env measured here"),
    "update order": ("every loss from one forward pass, then all three optimizers step", "the world model steps first; "
                     "actor and critic imagine with the updated model", "the actor learns in the freshest model; each "
                     "optimizer still steps its own parameters only"),
    "sequence batch": ("16 sequences x 50 steps", "batch_size // sequence_length = 8 sequences x 16 steps",
                       "the same 128 steps per update as the flat batch; 16 steps cover CartPole's hidden velocities"),
}


def seed_deviations() -> dict[str, tuple[Any, Any, str]]:
    """key -> (the seed's value, our default, why): every default that departs from the seed."""
    out = {}
    for key, field in Config.model_fields.items():
        note = field.json_schema_extra
        if isinstance(note, dict) and "seed" in note:
            default = field.get_default(call_default_factory=True)
            out[key] = (note["seed"], [c.model_dump() for c in default] if key == "update_schedule" else default, note["why"])
    return out


PRESETS: dict[str, dict[str, Any]] = {
    "cartpole": {"env_id": "CartPole-v1", "warmup_steps": 500, "transition_steps": 500, "total_steps": 2500,
                 "eval_every": 250},
    "pendulum": {"env_id": "Pendulum-v1", "warmup_steps": 1000, "transition_steps": 1000, "total_steps": 15000,
                 "eval_every": 1000, "replay_ratio": 1.0, "solved_return": -200.0},
    "smoke": {"hidden_dim": 32, "feature_dim": 32, "state_dim": 16, "batch_size": 16, "horizon": 5,
              "warmup_steps": 100, "transition_steps": 100, "learning_starts": 32, "replay_ratio": 0.25,
              "log_every": 50, "eval_every": 100, "eval_episodes": 2, "checkpoint_every": 100,
              "export_every": 100},
    # The seed's stated numbers, on our algorithm: diagram 5's phases and multi-update schedule, the
    # learning rates its remedies start from, its entropy weight, raw (not normalised)
    # returns (on frames too) and its example batch. What stays ours is in the table of departures (docs/learning.md).
    "seed_values": {key: seed for key, (seed, _, _) in seed_deviations().items()} | {"symlog": False},
}


def parse_override(item: str) -> tuple[str, Any]:
    """`key=value` -> (key, value); the value is read as JSON when it parses, else as a string."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ValueError(f"override {item!r} is not of the form key=value")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def resolve_config(preset: str | None = None, overrides: list[str] | None = None,
                   **fields: Any) -> tuple[Config, dict[str, str]]:
    """The config and, per key, where its value came from: default, frames default, preset NAME, --set, or flag."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
        values.update(PRESETS[preset])
        sources.update(dict.fromkeys(PRESETS[preset], f"preset {preset}"))
    for item in overrides or []:
        key, value = parse_override(item)
        if key not in Config.model_fields:
            raise ValueError(f"unknown config key {key!r}")
        values[key] = value
        sources[key] = "--set"
    given = {k: v for k, v in fields.items() if v is not None}
    values.update(given)
    sources.update(dict.fromkeys(given, "flag"))
    cfg = Config(**values)
    default = lambda key: "frames default" if cfg.frames and key in FRAME_DEFAULTS else "default"  # noqa: E731
    return cfg, {key: sources.get(key, default(key)) for key in Config.model_fields}


def build_config(preset: str | None = None, overrides: list[str] | None = None, **fields: Any) -> Config:
    """Defaults, then the preset, then `--set` overrides, then explicit fields (CLI flags)."""
    return resolve_config(preset, overrides, **fields)[0]
