"""The REST API's request and response bodies: what the OpenAPI document shows, and what the hot
routes parse themselves (app.py's `parse`). Names here are the document's component names."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag

SEED_MAX = 2**32 - 1  # exact as a JSON number in every client
COUNT_MAX = 2**53 - 1  # the largest integer every JSON client reads exactly

def _integral(value):
    """JSON Schema counts 579.0 as an integer; so do we (but not "579" or true)."""
    return int(value) if type(value) is float and value.is_integer() else value


Integer = Annotated[int, BeforeValidator(_integral)]
Action = int | list[float]  # env form: an index for Discrete, a vector for Box
PlanAction = Any  # checked against the served action space by inputs.plan, which names the bad element


# ---------------------------------------------------------------------------- request / response
class Strict(BaseModel):
    """Unknown fields, explicit nulls and lax coercions ("true" for true, 1.0 for 1) are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class EncodedImage(Strict):
    """An image observation as a file: for a model that sees frames (observation dtype uint8)."""

    image: str = Field(description="base64 of a PNG or JPEG file of exactly the model's height x width, in colour (RGB)")


class RawImage(Strict):
    """An image observation as its raw pixels: for a model that sees frames (observation dtype uint8)."""

    data: str = Field(description="base64 of the uint8 pixels, row-major [height, width, channels]")
    shape: list[int] = Field(description="[height, width, channels]: the model's observation shape")


def _observation_form(value) -> str:
    """Which form an observation takes, so that a bad one is told what is wrong with that form."""
    if isinstance(value, dict):
        return "file" if "image" in value else "pixels"
    return "numbers"


# Nested lists of numbers (the shape comes from the served manifest), or for image models a file or raw
# pixels. The tags appear in pydantic's error locations; app.field_name leaves them out.
OBSERVATION_FORMS = ("numbers", "file", "pixels")
Observation = Annotated[Annotated[list[Any], Tag("numbers")] | Annotated[EncodedImage, Tag("file")]
                        | Annotated[RawImage, Tag("pixels")], Discriminator(_observation_form)]


class History(Strict):
    """The client's previous steps in this episode, oldest first: each observation with the action taken
    after it (in the form `/act` answers give). At most the model's `history_length` steps (GET /model,
    manifest), which is all an agent with memory reads; an agent without one (history_length 0) takes
    none. Stateless: any replica answers the same."""

    observations: list[Observation] = Field(description="observations before `obs`, oldest first, in the same form as `obs`")
    actions: list[PlanAction] = Field(description="the action taken after each of `observations` (as many)")


HISTORY = Field(None, description="the steps before `obs`, for an agent with memory (with one `obs`, not a batch)")
SESSION = Field(None, pattern=r"^[A-Za-z0-9._-]{1,128}$",
                description="keep this client's recent steps on the server instead of sending a `history`: "
                            "bounded and expiring; `/act` records each step, `/value` and `/imagine` only read them")


class ObservationRequest(Strict):
    obs: Observation = Field(None, description="one observation")
    observations: list[Observation] = Field(None, description="a batch of observations")
    history: History = HISTORY
    session: str = SESSION


class ActRequest(ObservationRequest):
    deterministic: bool = Field(False, description="the most likely action instead of a sample")
    seed: Integer = Field(None, ge=0, le=SEED_MAX, description="makes a sampled action reproducible")
    reset: bool = Field(False, description="a new episode in `session`: forget its steps before this one")
    reward: float = Field(None, description="in a `session`: the reward that followed the session's previous action, "
                          "`obs` being what followed it; the server logs the transition for the trainer before answering")
    terminated: bool = Field(False, description="with `reward`: the previous action ended the episode (`obs` is its last); "
                             "the session's next request starts a new one")
    truncated: bool = Field(False, description="with `reward`: the episode was cut short after the previous action")
    evaluate: bool = Field(False, description="with `reset` in a `session`: this episode is an evaluation: one model "
                           "version (the one serving now) acts deterministically until the episode's end, and its "
                           "return (from the reported rewards) is that version's evaluation")


class ImagineRequest(Strict):
    obs: Observation = Field(description="the observation to imagine from")
    horizon: Integer = Field(None, ge=1, description="steps to imagine (default: the manifest's); the plan's length when `actions` is given")
    samples: Integer = Field(1, ge=1, description="trajectories, batched through the graphs together")
    deterministic: bool = False
    seed: Integer = Field(None, ge=0, le=SEED_MAX)
    actions: list[PlanAction] = Field(None, description="an action plan to evaluate instead of the policy")
    format: Literal["json", "png", "gif"] = Field("json", description="json; png: the preview picture (an image model's "
                                                  "filmstrip, one row per sample); gif: an image model's filmstrip animated")
    history: History = HISTORY  # (a session's steps: GET /imagine?session=; the body's rules leave no room for both)


class Step(Strict):
    """One step a client acted: the observation it acted on, the action, and what the env gave back."""

    obs: Observation = Field(description="the observation the action was chosen on, in the same forms as `/act`'s `obs`")
    action: PlanAction = Field(description="the action taken, in the form `/act` answers give")
    reward: float = Field(description="the reward that followed")
    model_version: Integer = Field(-1, ge=-1, le=COUNT_MAX, description="the model version that chose the action (-1: not known)")


class FragmentBody(Strict):
    """Consecutive steps of one episode, acted by the client (e.g. with the bundle's ONNX graphs)."""

    episode: str = Field(pattern=r"^[A-Za-z0-9._:-]{1,128}$", description="the episode's id, unique to it (a UUID, say)")
    index: Integer = Field(ge=0, le=COUNT_MAX, description="the fragment's index in its episode: a retried (episode, index) is stored once")
    steps: list[Step] = Field(min_length=1, description="the steps, in the order they were played")
    next_obs: Observation = Field(description="the observation after the last step")
    terminated: bool = Field(False, description="the last step ended the episode")
    truncated: bool = Field(False, description="the last step cut the episode short (a time limit, the client stopped)")


class ExperienceUpload(Strict):
    fragments: list[FragmentBody] = Field(min_length=1)


class StoredFragment(BaseModel):
    episode: str
    index: int
    seq: int = Field(description="the fragment's position in the experience log")
    stored: bool = Field(description="false for a retry of a fragment the log holds already")


class ExperienceResponse(BaseModel):
    fragments: list[StoredFragment]
    steps: int = Field(description="steps newly stored; durable when this answer is sent")


class ActResponse(BaseModel):
    action: Action
    value: float
    model_version: int
    probs: list[float] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    session_step: int | None = Field(None, description="with a `session`: this step's index in the session's episode (0 after a reset, or when the session was new or had expired)")


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
    disagreement: list[float] = Field(description="the dynamics ensemble's disagreement on each imagined state "
                                      "(its members' standard deviation; 0 with one member): where imagination is unsure")


class ImagineResponse(BaseModel):
    model_version: int
    horizon: int
    trajectories: list[Trajectory]


class Error(BaseModel):
    detail: str
    field: str | None = None
