"""The OpenAPI document, made exact for the bundle being served.

The request models can only say "nested lists of numbers"; the served manifest knows the
observation shape, the action space and the horizon limit. Writing those into the document
makes `/docs` show clients exactly what to send, and lets contract testers (schemathesis) check
that everything the document allows is accepted and everything it forbids is refused.
"""

from __future__ import annotations

import copy
import math

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from reverie.bundle import Manifest

from .inputs import FLOAT32_MAX, NUMBER_PATTERN
from .settings import ServiceSettings
from .store import ModelStore


def install(app: FastAPI, store: ModelStore, settings: ServiceSettings, bodies: dict[str, type[BaseModel]]) -> None:
    """Serve FastAPI's document refined for the bundle being served, rebuilt when a bundle with
    other spaces loads. `bodies` are the request models the hot routes parse themselves."""
    documents: dict = {}

    def document() -> dict:
        runtime = store.current
        key = None if runtime is None else runtime.manifest.model_dump_json(
            include={"observation_space", "action_space", "max_horizon", "env_id", "history_length"})
        if key not in documents:
            base = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schemas = base["components"]["schemas"]
            for name, model in bodies.items():  # nested models (History) become components of their own
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[name] = schema
            documents.clear()
            documents[key] = base if runtime is None else refine(base, runtime.manifest, settings)
        return documents[key]

    app.openapi = document


def observation_schema(manifest: Manifest) -> dict:
    """One observation: nested arrays of the bundle's shape; for an image model also a PNG or JPEG file
    or the raw pixels, base64 (`schemas.EncodedImage`, `schemas.RawImage`)."""
    space = manifest.observation_space
    image = space.dtype == "uint8"
    schema: dict = ({"type": "integer", "minimum": 0, "maximum": 255} if image
                    else {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX})
    for size in reversed(space.shape):
        schema = {"type": "array", "items": schema, "minItems": size, "maxItems": size}
    description = f"one observation of shape {space.shape} ({manifest.env_id})"
    if not image:
        return schema | {"description": description}
    raw = {"type": "object", "required": ["data", "shape"], "additionalProperties": False,
           "properties": {"data": {"type": "string", "contentEncoding": "base64",
                                   "description": f"base64 of {math.prod(space.shape)} uint8 pixels, row-major"},
                          "shape": {"const": list(space.shape)}}}
    return {"anyOf": [schema, {"$ref": "#/components/schemas/EncodedImage"}, raw],
            "description": description + ": uint8 numbers (small images), a PNG or JPEG file, or the raw pixels"}


def action_schema(manifest: Manifest) -> dict:
    space = manifest.action_space
    if space.kind == "discrete":
        return {"type": "integer", "minimum": 0, "maximum": space.n - 1}
    return {"type": "array", "minItems": space.shape[0], "maxItems": space.shape[0],
            "prefixItems": [{"type": "number", "minimum": lo, "maximum": hi} for lo, hi in zip(space.low, space.high)]}


def _exactly_one_observation_form(schema: dict) -> None:
    schema["oneOf"] = [
        {"required": ["obs"], "not": {"required": ["observations"]}},
        {"required": ["observations"], "not": {"required": ["obs"]}},
    ]


# A memory goes with one observation, comes from a `history` or a `session` (not both), and only a
# session can be reset.
MEMORY_RULES = [{"not": {"required": ["history", "session"]}},
                {"not": {"required": ["observations", "history"]}},
                {"not": {"required": ["observations", "session"]}}]
RESET_NEEDS_SESSION = {"anyOf": [{"required": ["session"]},
                                 {"not": {"required": ["reset"], "properties": {"reset": {"const": True}}}}]}
# An outcome completes a session's last step (a reset has none), and an episode's end comes with its reward.
OUTCOME_RULES = [{"anyOf": [{"required": ["session"]}, {"not": {"required": ["reward"]}}]},
                 {"not": {"required": ["reward", "reset"], "properties": {"reset": {"const": True}}}},
                 {"anyOf": [{"required": ["reward"]},
                            {"properties": {"terminated": {"const": False}, "truncated": {"const": False}}}]}]


def history_schema(schema: dict, manifest: Manifest) -> dict:
    """The History body for this bundle: at most history_length steps, as many actions as observations."""
    length, schema = manifest.history_length, copy.deepcopy(schema)
    schema["properties"]["observations"] |= {"items": observation_schema(manifest), "maxItems": length}
    schema["properties"]["actions"] |= {"items": action_schema(manifest), "maxItems": length}
    schema["anyOf"] = [{"properties": {"observations": {"minItems": n, "maxItems": n}, "actions": {"minItems": n, "maxItems": n}}}
                       for n in range(length + 1)]
    schema["description"] += f" This model reads at most {length} steps."
    return schema


def refine(document: dict, manifest: Manifest, settings: ServiceSettings) -> dict:
    """A copy of FastAPI's `document` with the served bundle's shapes, bounds and limits written in."""
    document = copy.deepcopy(document)
    schemas = document["components"]["schemas"]
    obs = observation_schema(manifest)
    batch = {"type": "array", "items": obs, "minItems": 1, "maxItems": settings.max_batch}
    schemas["History"] = history_schema(schemas["History"], manifest)
    for name in ("ObservationRequest", "ActRequest"):
        properties = schemas[name]["properties"]
        properties["obs"] = obs
        properties["observations"] = batch
        _exactly_one_observation_form(schemas[name])
        schemas[name]["allOf"] = MEMORY_RULES + ([RESET_NEEDS_SESSION, *OUTCOME_RULES] if name == "ActRequest" else [])
    act = schemas["ActRequest"]["properties"]
    act["reward"] = act["reward"] | {"minimum": -settings.reward_bound, "maximum": settings.reward_bound}

    step = schemas["Step"]["properties"]
    step["obs"], step["action"] = obs, action_schema(manifest)
    step["reward"] = step["reward"] | {"minimum": -settings.reward_bound, "maximum": settings.reward_bound}
    fragment = schemas["FragmentBody"]["properties"]
    fragment["next_obs"] = obs
    fragment["steps"] = fragment["steps"] | {"maxItems": settings.max_fragment_steps}

    imagine = schemas["ImagineRequest"]
    properties = imagine["properties"]
    properties["obs"] = obs
    properties["horizon"] = properties["horizon"] | {"maximum": manifest.max_horizon}
    properties["samples"] = properties["samples"] | {"maximum": settings.max_samples}
    if len(manifest.observation_space.shape) == 1:  # gif animates frames: an image model's only
        properties["format"] = properties["format"] | {"enum": ["json", "png"]}
    properties["actions"] = properties["actions"] | {"items": action_schema(manifest), "minItems": 1,
                                                        "maxItems": manifest.max_horizon}
    # A plan's length is its horizon: a request that gives both must make them agree.
    imagine["anyOf"] = [{"not": {"required": ["actions", "horizon"]}}] + [
        {"properties": {"horizon": {"const": h}, "actions": {"minItems": h, "maxItems": h}}}
        for h in range(1, manifest.max_horizon + 1)
    ]

    if len(manifest.observation_space.shape) != 1:  # a frame is no query string: POST /imagine takes it
        del document["paths"]["/imagine"]["get"]
        for path, name in (("/act", "ActRequest"), ("/value", "ObservationRequest"), ("/imagine", "ImagineRequest")):
            document["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"] = upload_schema(schemas[name])
        return document
    for parameter in document["paths"]["/imagine"]["get"]["parameters"]:
        name = parameter["name"]
        if name == "obs" and len(manifest.observation_space.shape) == 1:
            size = manifest.observation_space.shape[0]
            parameter["schema"]["pattern"] = rf"^{NUMBER_PATTERN}(,{NUMBER_PATTERN}){{{size - 1}}}$"
        elif name == "horizon":
            parameter["schema"] = _integer_or_null(parameter["schema"], manifest.max_horizon)
        elif name == "samples":
            parameter["schema"] = parameter["schema"] | {"maximum": settings.max_samples}
    return document


def upload_schema(body: dict) -> dict:
    """An image model's request as a multipart upload (`curl -F obs=@frame.png -F deterministic=true`):
    `obs` (or each `observations` part) a PNG or JPEG file, every other field its JSON value as text."""
    properties = {name: {"type": "string", "description": "this field's JSON value, as text"}
                  for name in body["properties"] if name not in ("obs", "observations")}
    image = {"type": "string", "format": "binary", "description": "a PNG or JPEG file of the model's size"}
    properties["obs"] = image
    if "observations" in body["properties"]:
        properties["observations"] = {"type": "array", "items": image}
    return {"schema": {"type": "object", "properties": properties},
            "encoding": {"obs": {"contentType": "image/png, image/jpeg"}}}


def _integer_or_null(schema: dict, maximum: int) -> dict:
    if "anyOf" in schema:
        return {**schema, "anyOf": [s | {"maximum": maximum} if s.get("type") == "integer" else s for s in schema["anyOf"]]}
    return schema | {"maximum": maximum}
