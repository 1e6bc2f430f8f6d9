"""The REST API's request and response bodies: what the OpenAPI document shows, and what the hot
routes parse themselves (app.py's `parse`). Names here are the document's component names."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

SEED_MAX = 2**32 - 1  # exact as a JSON number in every client

def _integral(value):
    """JSON Schema counts 579.0 as an integer; so do we (but not "579" or true)."""
    return int(value) if type(value) is float and value.is_integer() else value


Integer = Annotated[int, BeforeValidator(_integral)]
Observation = list[Any]  # nested lists of numbers; the shape comes from the served manifest
Action = int | list[float]  # env form: an index for Discrete, a vector for Box
PlanAction = Any  # checked against the served action space by inputs.plan, which names the bad element


# ---------------------------------------------------------------------------- request / response
class Strict(BaseModel):
    """Unknown fields, explicit nulls and lax coercions ("true" for true, 1.0 for 1) are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ObservationRequest(Strict):
    obs: Observation = Field(None, description="one observation")
    observations: list[Observation] = Field(None, description="a batch of observations")


class ActRequest(ObservationRequest):
    deterministic: bool = Field(False, description="the most likely action instead of a sample")
    seed: Integer = Field(None, ge=0, le=SEED_MAX, description="makes a sampled action reproducible")


class ImagineRequest(Strict):
    obs: Observation = Field(description="the observation to imagine from")
    horizon: Integer = Field(None, ge=1, description="steps to imagine (default: the manifest's); the plan's length when `actions` is given")
    samples: Integer = Field(1, ge=1, description="trajectories, batched through the graphs together")
    deterministic: bool = False
    seed: Integer = Field(None, ge=0, le=SEED_MAX)
    actions: list[PlanAction] = Field(None, description="an action plan to evaluate instead of the policy")
    format: Literal["json", "png"] = "json"


class ActResponse(BaseModel):
    action: Action
    value: float
    model_version: int
    probs: list[float] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None


class ActBatchResponse(BaseModel):
    actions: list[Action]
    values: list[float]
    model_version: int
    probs: list[list[float]] | None = None
    mean: list[list[float]] | None = None
    std: list[list[float]] | None = None


class ValueResponse(BaseModel):
    value: float
    model_version: int


class ValueBatchResponse(BaseModel):
    values: list[float]
    model_version: int


class Trajectory(BaseModel):
    states: list[list[float]]
    actions: list[Action]
    rewards: list[float]
    continues: list[float]
    values: list[float]
    lambda_return: list[float]


class ImagineResponse(BaseModel):
    model_version: int
    horizon: int
    trajectories: list[Trajectory]


class Error(BaseModel):
    detail: str
    field: str | None = None
