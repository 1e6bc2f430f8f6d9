"""The export bundle: the one contract between trainer and service (torch-free, defined once).

    EXPORT_DIR/
      v000001/  manifest.json  encoder.onnx  policy.onnx  value.onnx  world_model.onnx  decoder.onnx  act.onnx
      v000002/  ...
      LATEST    -> the name of the newest complete version (replaced atomically)
      BEST      -> the version with the highest last_eval_return so far (kept through pruning)
      evaluations.json  version -> eval return of versions evaluated after publishing (by clients)

A version is written under a temporary name and renamed into place, so a reader never sees a
half-written bundle; the manifest carries a sha256 of every file so a reader can refuse a
corrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

# 2: the fused `act` graph is required; 3: `world_model` takes agent actions (indices for Discrete);
# 4: `history_length`, and agents with memory read a history in `encoder` and `act`; `dynamics_context`,
# and transformer dynamics read the rollout's earlier steps in `world_model`, which also gives the
# ensemble's `disagreement` on each step
FORMAT_VERSION = 4
POINTER = "LATEST"
BEST = "BEST"
FOLLOW = {"latest": POINTER, "best": BEST}  # what a server can follow
VERSION_DIR = re.compile(r"^v(\d{6,})$")
MAX_HORIZON = 64  # the longest imagination a bundle serves: /imagine and Imagine refuse longer horizons

class GraphSpec(BaseModel):
    file: str
    inputs: list[str]
    outputs: list[str]


POLICY_OUTPUTS = {"discrete": ["logits"], "box": ["mean", "std"]}  # a Categorical's, a pre-tanh Normal's


HISTORY_INPUTS = ["history_obs", "history_action", "history_mask"]
PAST_INPUTS = ["past_state", "past_action", "past_mask"]


def graph_contract(action_kind: str, history_length: int = 0, dynamics_context: int = 0) -> dict[str, GraphSpec]:
    """Every graph of a bundle, its file and its named inputs and outputs. `act` is encoder, policy and
    value fused into one graph: the hot path of serving is one graph call.

    An agent with memory (`history_length` > 0) reads, beside the observation, the steps before it:
    `history_obs` [B, L, *obs], `history_action` [B, L] (indices) or [B, L, dim] (agent form) and
    `history_mask` [B, L] (bool, True for a real step), with L = `history_length` exactly (pad with
    False rows). Graphs are stateless: the memory is recomputed from the history at every call.

    Transformer dynamics (`dynamics_context` > 0) attend over an imagined rollout's earlier steps:
    `world_model` also takes `past_state` [B, C, state_size], `past_action` [B, C] or [B, C, dim] and
    `past_mask` [B, C] (a real prefix), the rollout's last C = `dynamics_context` steps before this one."""
    policy = POLICY_OUTPUTS[action_kind]
    observed = ["obs", *HISTORY_INPUTS] if history_length else ["obs"]
    return {
        "encoder": GraphSpec(file="encoder.onnx", inputs=observed, outputs=["state"]),
        "policy": GraphSpec(file="policy.onnx", inputs=["state"], outputs=policy),
        "value": GraphSpec(file="value.onnx", inputs=["state"], outputs=["value"]),
        "world_model": GraphSpec(file="world_model.onnx", inputs=["state", "action", *(PAST_INPUTS if dynamics_context else [])],
                                 outputs=["next_state", "reward", "continue", "disagreement"]),
        "decoder": GraphSpec(file="decoder.onnx", inputs=["state"], outputs=["obs"]),
        "act": GraphSpec(file="act.onnx", inputs=observed, outputs=[*policy, "value"]),
    }


class ObservationSpace(BaseModel):
    """What the agent sees: float32 vectors `[n]`, or uint8 frames `[H, W, 3]`."""

    model_config = ConfigDict(extra="forbid")

    shape: list[PositiveInt] = Field(min_length=1)
    dtype: Literal["float32", "uint8"] = "float32"

    @model_validator(mode="after")
    def _vector_or_frames(self) -> "ObservationSpace":
        if self.dtype == "uint8" and (len(self.shape) != 3 or self.shape[2] != 3):
            raise ValueError(f"uint8 observations are frames [H, W, 3], got shape {self.shape}")
        if self.dtype == "float32" and len(self.shape) != 1:
            raise ValueError(f"float32 observations are vectors [n], got shape {self.shape} (flatten it at the client)")
        return self


class ActionSpace(BaseModel):
    """What the agent does: one of `n` actions, or a vector within finite bounds."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["discrete", "box"]
    n: int | None = Field(None, ge=2)  # discrete: number of actions
    shape: list[PositiveInt] | None = None  # box: [dim]
    low: list[float] | None = None
    high: list[float] | None = None

    @model_validator(mode="after")
    def _complete(self) -> "ActionSpace":
        if self.kind == "discrete":
            if self.n is None:
                raise ValueError("a discrete action space needs `n`, its number of actions")
            return self
        if self.shape is None or len(self.shape) != 1:
            raise ValueError("a box action space needs `shape` [dim]")
        for name in ("low", "high"):
            bound = getattr(self, name)
            if bound is None or len(bound) != self.shape[0]:
                raise ValueError(f"a box action space needs `{name}`: {self.shape[0]} finite numbers")
            if not all(math.isfinite(v) for v in bound):
                raise ValueError(f"`{name}` must be finite: a box needs finite bounds")
        if any(lo > hi for lo, hi in zip(self.low, self.high)):
            raise ValueError(f"`low` {self.low} is above `high` {self.high}")
        return self


class WorldSpaces(BaseModel):
    """`reverie train|up --spaces FILE`: the spaces of a world that lives at the client (a game, a
    robot), in the manifest's own form, so no gymnasium env is needed to learn it."""

    model_config = ConfigDict(extra="forbid")

    observation_space: ObservationSpace
    action_space: ActionSpace
    name: str = Field("client-world", pattern=r"^[A-Za-z0-9._-]{1,64}$")

    @property
    def frames(self) -> bool:
        return self.observation_space.dtype == "uint8"


def load_spaces(path: str | os.PathLike) -> WorldSpaces:
    """A spaces file, or a ValueError naming each wrong field (`action_space.low: ...`)."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ValueError(f"spaces file {path}: {err.strerror}") from None
    try:
        return WorldSpaces.model_validate_json(text)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg'].removeprefix('Value error, ')}"
                             for e in err.errors())
        raise ValueError(f"spaces file {path}: {problems}") from None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    model_version: int
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    training_step: int
    phase: str
    env_id: str  # a gymnasium id, or the name of a world that lives at the client (`world`)
    world: Literal["env", "client"] = "env"  # client: declared by a spaces file, no env can play it
    obs_indices: list[int] | None = None  # the env's observation entries the agent sees (all when None)
    pixels: bool = False  # the agent sees the env's rendered frames (ALE/ games always do): reverie.envs.EnvSpec
    image_size: int = 84  # frames are [image_size, image_size, 3] uint8
    action_repeat: int = Field(1, ge=1)  # env steps each action is held for
    observation_space: ObservationSpace
    action_space: ActionSpace
    state_size: int
    history_length: int = Field(0, ge=0)  # the most past steps the agent reads (0: no memory); see graph_contract
    dynamics_context: int = Field(0, ge=0)  # the most earlier rollout steps the dynamics read (0: none); see graph_contract
    # Imagination's next-state noise as trained (dynamics_sample): sampled /imagine rollouts draw each next
    # state from Normal(the world_model graph's mean, dynamics_std) in its first state_dim entries (the
    # state; a memory after it is not drawn). 0: the mean, as in bundles from before it was recorded.
    dynamics_std: float = Field(0.0, ge=0)
    state_dim: int | None = Field(None, ge=1)  # None: the whole state_size
    gamma: float
    lambda_: float
    default_horizon: int
    max_horizon: int
    last_eval_return: float | None
    seed: int = 0  # the run's seed and eval episodes: `reverie eval` replays the trainer's own evaluation
    eval_episodes: int = 10
    graphs: dict[str, GraphSpec]
    sha256: dict[str, str] = Field(default_factory=dict)


class BundleError(Exception):
    """A bundle that must not be served: missing files, bad manifest, checksum mismatch."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def versions(export_dir: Path) -> list[int]:
    """Published version numbers, ascending."""
    if not export_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in export_dir.iterdir() if p.is_dir() and (m := VERSION_DIR.match(p.name)))


def version_dir(export_dir: Path, version: int) -> Path:
    return export_dir / f"v{version:06d}"


def publish(export_dir: Path, staging: Path, manifest: Manifest, keep: int, tolerance: float = 0.0) -> Path:
    """Checksum the staged graphs, write the manifest, rename the folder into place, move the pointer
    (and BEST, see `record_evaluation`, when the manifest carries an evaluation).

    `manifest.model_version` is overwritten with the next free version number.
    """
    export_dir.mkdir(parents=True, exist_ok=True)
    manifest.model_version = (versions(export_dir) or [0])[-1] + 1
    manifest.sha256 = {path.name: sha256_of(path) for path in sorted(staging.iterdir()) if path.name != "manifest.json"}
    (staging / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    final = version_dir(export_dir, manifest.model_version)
    os.replace(staging, final)
    _point(export_dir, POINTER, final)
    if manifest.last_eval_return is not None:
        record_evaluation(export_dir, manifest.model_version, manifest.last_eval_return, tolerance)
    best = _pointed(export_dir, BEST)
    for old in versions(export_dir)[:-keep]:
        if version_dir(export_dir, old) != best:
            shutil.rmtree(version_dir(export_dir, old), ignore_errors=True)
    return final


EVALUATIONS = "evaluations.json"  # version -> eval return, every version evaluated (at export, or later by clients)


def record_evaluation(export_dir: Path, version: int, eval_return: float, tolerance: float = 0.0) -> None:
    """A version's evaluation, and the promotion rule of BEST (what a server following it serves):
    BEST moves to the version when it is newer than BEST and its evaluation is within `tolerance` x
    |record| of the record, the best evaluation of any version so far. So a served version never
    evaluated worse than an earlier served one by more than that; ties and near-ties go to the
    newer, longer-trained version. Evaluations are kept beside the versions (manifests are immutable):
    a client world's versions are evaluated after they are published."""
    export_dir = Path(export_dir)
    known = evaluations(export_dir)
    record = max(known.values(), default=None)
    known[str(version)] = eval_return
    tmp = export_dir / f".{EVALUATIONS}.tmp"
    tmp.write_text(json.dumps(known, indent=1))
    os.replace(tmp, export_dir / EVALUATIONS)
    bundle, best = version_dir(export_dir, version), _pointed(export_dir, BEST)
    newer = best is None or version > int(VERSION_DIR.match(best.name).group(1))
    if (bundle / "manifest.json").is_file() and newer and promotes(eval_return, record, tolerance):
        _point(export_dir, BEST, bundle)


def promotes(eval_return: float, record: float | None, tolerance: float) -> bool:
    """Whether a newer version's evaluation earns BEST: within `tolerance` x |record| of the record."""
    return record is None or eval_return >= record - tolerance * abs(record)


def evaluations(export_dir: Path) -> dict[str, float]:
    """version (as text) -> evaluation, for every version evaluated so far (pruned ones too)."""
    try:
        return json.loads((export_dir / EVALUATIONS).read_text())
    except (OSError, ValueError):
        return {}


def _point(export_dir: Path, pointer: str, bundle: Path) -> None:
    tmp = export_dir / f".{pointer}.tmp"
    tmp.write_text(bundle.name)
    os.replace(tmp, export_dir / pointer)


def _pointed(export_dir: Path, pointer: str) -> Path | None:
    """The complete bundle a pointer names, or None."""
    try:
        candidate = export_dir / (export_dir / pointer).read_text().strip()
    except OSError:
        return None
    return candidate if (candidate / "manifest.json").is_file() else None


def load_manifest(bundle: Path) -> Manifest:
    """The manifest of one bundle folder, with every file's checksum verified."""
    try:
        manifest = Manifest.model_validate_json((bundle / "manifest.json").read_text())
    except (OSError, ValueError) as err:
        raise BundleError(f"{bundle}: unreadable manifest: {err}") from err
    if manifest.format_version != FORMAT_VERSION:
        raise BundleError(f"{bundle}: format version {manifest.format_version}, expected {FORMAT_VERSION}")
    contract = graph_contract(manifest.action_space.kind, manifest.history_length, manifest.dynamics_context)
    missing = [name for name in contract if name not in manifest.graphs]
    if missing:
        raise BundleError(f"{bundle}: the manifest lacks graphs {', '.join(missing)}")
    for name, spec in contract.items():
        if manifest.graphs[name] != spec:
            raise BundleError(f"{bundle}: graph {name} is declared as {manifest.graphs[name].model_dump()}, "
                              f"the bundle format says {spec.model_dump()}")
    unlisted = [spec.file for spec in manifest.graphs.values() if spec.file not in manifest.sha256]
    if unlisted:
        raise BundleError(f"{bundle}: no checksum for {', '.join(unlisted)}")
    for name, digest in manifest.sha256.items():
        path = bundle / name
        if not path.is_file():
            raise BundleError(f"{bundle}: missing {name}")
        if sha256_of(path) != digest:
            raise BundleError(f"{bundle}: checksum mismatch for {name}")
    return manifest


def latest_bundle(path: Path, follow: str = "latest") -> Path | None:
    """PATH may be a run dir, its export folder or one bundle: the newest complete bundle there, or
    with follow="best" the best-evaluated one (the newest while no export has an eval yet)."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        return path
    export_dir = path / "export" if (path / "export").is_dir() else path
    for pointer in dict.fromkeys((FOLLOW[follow], POINTER)):
        if (bundle := _pointed(export_dir, pointer)) is not None:
            return bundle
    found = versions(export_dir)
    return version_dir(export_dir, found[-1]) if found else None
