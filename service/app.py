"""The REST front end: FastAPI over the shared runtime.

Every answer comes from one runtime taken from the store at the start of the request and names
its `model_version`. Bad input is a 4xx whose JSON body names the field and never echoes the
value; a 5xx means a bug, never a client's mistake.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
from typing import Literal

import anyio
import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

import reverie
from reverie.errors import InputError

from . import inputs, openapi, preview
from .calls import ActCall, Calls, ImagineCall, ValueCall
from .experience import NoExperience, UploadedFragment
from .guard import Guard
from .hot import HotPaths, HotRoute
from .live import PAGE, MetricRows, live
from .metrics import ServiceMetrics
from .requests import WriteDenied, failure_status, json_observations
from .responses import error_response, json_response
from .schemas import (OBSERVATION_FORMS, SEED_MAX, ActBatchResponse, ActRequest, ActResponse, Error, ExperienceResponse,
                      ExperienceUpload, FragmentBody, ImagineRequest, ImagineResponse, ObservationRequest, ValueBatchResponse,
                      ValueResponse)
from .store import NotReady

log = logging.getLogger("reverie.service")
MAX_FORM_PARTS = 64  # files and fields of one multipart upload (a batch of frames, with its options)
ERRORS = {code: {"model": Error} for code in (401, 413, 422, 503)}
WRITE_ERRORS = {code: {"model": Error} for code in (401, 403, 404, 413, 422, 503)}
ACT_ERRORS = {code: {"model": Error} for code in (401, 403, 404, 409, 413, 422, 503)}  # 403, 404, 409: reported outcomes
BODIES = {model.__name__: model for model in (ActRequest, ObservationRequest, ImagineRequest, ExperienceUpload)}
METRICS = {200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format"}}
PNG = {200: {"content": {"application/json": {}, "image/png": {}, "image/gif": {}},
             "description": "JSON trajectories, or the preview: PNG (an image model's filmstrip), GIF (its animation)"}}


def body_of(model: type[BaseModel]) -> dict:
    """The request body as the OpenAPI document shows it (the handler parses it itself, see `parse`)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


async def parse(request: Request, model: type[BaseModel]):
    """Body bytes -> model in one pass of pydantic's JSON parser (which also reads NaN and Infinity,
    so that the observation checks can name them); a failure is the same 422 as FastAPI's own.
    A multipart/form-data body (`curl -F obs=@frame.png`) is read by `form_body` first."""
    try:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            return model.model_validate(await form_body(request))
        return model.model_validate_json(await request.body())
    except ValidationError as err:
        raise RequestValidationError(err.errors()) from None


async def form_body(request: Request) -> dict:
    """A multipart upload as the JSON body it stands for: each file part an image file observation
    (`{"image": base64}`; `observations` and `history` parts repeat), each other part's value read
    as JSON where it parses (`true`, `3`, an object), else as the string it is (a session id)."""
    try:
        form = await request.form(max_files=MAX_FORM_PARTS, max_fields=MAX_FORM_PARTS)
    except MultiPartException as err:
        raise FieldError(422, "body", f"malformed multipart/form-data: {err.message}") from None
    body: dict = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            value = {"image": base64.b64encode(await value.read()).decode("ascii")}
        else:
            with contextlib.suppress(ValueError):
                value = orjson.loads(value)
        if key == "observations":
            body.setdefault(key, []).append(value)
        elif key in body:
            raise FieldError(422, key, "given twice")
        else:
            body[key] = value
    return body


class FieldError(HTTPException):
    def __init__(self, status: int, field: str, detail: str, headers: dict | None = None):
        super().__init__(status, detail, headers)
        self.field = field


# ---------------------------------------------------------------------------- helpers
def pair(history) -> tuple | None:
    """A request's `history` body as (observations, actions), or None."""
    return None if history is None else (history.observations, history.actions)


def field_name(loc: tuple) -> str:
    """('body', 'observations', 3, 1) -> 'observations[3][1]'."""
    parts = [p for p in loc if p not in ("body", "query", "path", "header") and p not in OBSERVATION_FORMS]
    name = ""
    for p in parts:
        name += f"[{p}]" if isinstance(p, int) else (f".{p}" if name else str(p))
    return name or str(loc[0] if loc else "body")


# ---------------------------------------------------------------------------- errors
def add_error_handlers(app: FastAPI) -> None:
    """Every failure as `{"detail", "field"}`, for FastAPI's routes and the hot paths alike."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_, exc: RequestValidationError):
        first = exc.errors()[0]  # its `input` may be a NaN or a megabyte: never echoed
        loc, kind = tuple(first.get("loc", ())), first.get("type")
        if kind == "json_invalid":
            return error_response(422, "invalid JSON", "body")
        if loc in ((), ("body",)) and kind in ("model_type", "model_attributes_type", "dict_type"):
            return error_response(422, "expected a JSON object (Content-Type: application/json)", "body")
        return error_response(422, first.get("msg", "invalid"), field_name(loc))

    @app.exception_handler(InputError)
    async def _bad_input(_, exc: InputError):
        return error_response(failure_status(exc)[0], exc.message, exc.field)

    @app.exception_handler(NotReady)
    async def _not_ready(_, exc: NotReady):
        return error_response(failure_status(exc)[0], str(exc), None, {"Retry-After": "1"})

    @app.exception_handler(NoExperience)
    async def _no_experience(request, exc: NoExperience):
        return error_response(failure_status(exc)[0], str(exc), "fragments" if request.url.path == "/experience" else "reward")

    @app.exception_handler(WriteDenied)
    async def _write_denied(_, exc: WriteDenied):
        return error_response(failure_status(exc)[0], str(exc), "Authorization")

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        headers = exc.headers
        if exc.status_code == 405:  # GET and POST /imagine are two routes: Allow lists both
            methods = sorted({m for r in app.routes if getattr(r, "path", None) == request.url.path for m in r.methods})
            headers = {**(headers or {}), "Allow": ", ".join(methods)}
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "field", None), headers)


# ---------------------------------------------------------------------------- the app
def served(app: FastAPI) -> ASGIApp:
    """What uvicorn serves: the guard (body limit, metrics) around the hot paths, in front of FastAPI;
    with `cors_origins`, Starlette's CORS middleware outermost, so that every answer (the hot paths', and
    the guard's 413 as well as 401s and 422s) carries the headers a page from an allowed origin needs."""
    settings = app.state.settings
    endpoints = {route.path for route in app.routes}
    guarded = Guard(HotPaths(app), max_body_bytes=settings.max_body_bytes, metrics=app.state.metrics, endpoints=endpoints)
    if not settings.cors_origins:
        return guarded
    return CORSMiddleware(guarded, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                          allow_headers=["Authorization", "Content-Type"], expose_headers=["Retry-After", "X-Model-Version"],
                          max_age=600)


STEP_FIELDS = {"observations": "obs", "actions": "action", "rewards": "reward", "model_versions": "model_version"}


def uploaded(body: FragmentBody, field: str) -> UploadedFragment:
    """A fragment as REST sends it, a list of steps and the observation after them, for the call layer."""
    steps = body.steps

    def name(part: str, row: int | None) -> str:
        if part in ("episode", "index"):
            return f"{field}.{part}"
        if row is None:
            return f"{field}.steps"
        return f"{field}.next_obs" if row == len(steps) else f"{field}.steps[{row}].{STEP_FIELDS[part]}"

    return UploadedFragment(body.episode, body.index, [step.obs for step in steps] + [body.next_obs],
                            [step.action for step in steps], [step.reward for step in steps],
                            [step.model_version for step in steps], body.terminated, body.truncated, name)


class Endpoints:
    """The REST endpoints, each a translator: its body or query into a call of `calls`, the answer into JSON."""

    def __init__(self, calls: Calls, metrics: ServiceMetrics):
        self.calls, self.metrics, self.settings = calls, metrics, calls.settings
        self.rows = MetricRows()

    # -------------------------------------------------------------- agent
    async def act(self, raw: Request):
        """An action for one observation (`obs`) or for each of a batch (`observations`)."""
        request = await parse(raw, ActRequest)
        answer = await self.calls.act(ActCall(
            functools.partial(json_observations, request.obs, request.observations), pair(request.history),
            request.session, request.reset, request.reward, request.terminated, request.truncated, request.evaluate,
            request.deterministic, request.seed, raw.headers.get("authorization") if request.reward is not None else None))
        result = answer.result
        params = answer.details()
        if answer.batched:
            return json_response({"actions": result.actions, "values": result.values,
                                  "model_version": answer.model_version, **params})
        reply = {"action": result.actions[0], "value": float(result.values[0]), "model_version": answer.model_version,
                 **{k: v[0] for k, v in params.items()}}
        if answer.session_step is not None:
            reply["session_step"] = answer.session_step
        return json_response(reply)

    async def value(self, raw: Request):
        """The critic's value of one observation or of each of a batch."""
        request = await parse(raw, ObservationRequest)
        answer = self.calls.value(ValueCall(functools.partial(json_observations, request.obs, request.observations),
                                            pair(request.history), request.session))
        if answer.batched:
            return json_response({"values": answer.values, "model_version": answer.model_version})
        return json_response({"value": float(answer.values[0]), "model_version": answer.model_version})

    async def _imagine(self, call: ImagineCall, fmt: str) -> Response:
        answer = self.calls.imagine(call)
        result, version = answer.imagination, answer.runtime.version
        if fmt != "json":
            picture = await anyio.to_thread.run_sync(preview.render, answer.runtime, result, fmt)
            return Response(picture, media_type=f"image/{fmt}", headers={"X-Model-Version": str(version)})
        trajectories = [{"states": result.states[i], "actions": result.actions[i], "rewards": result.rewards[i],
                         "continues": result.continues[i], "values": result.values[i],
                         "lambda_return": result.lambda_return[i], "disagreement": result.disagreement[i]}
                        for i in range(len(result.states))]
        return json_response({"model_version": version, "horizon": result.horizon, "trajectories": trajectories})

    async def imagine_get(
        self,
        obs: str = Query(description="one vector observation, comma-separated"),
        horizon: int = Query(None, ge=1),
        samples: int = Query(1, ge=1),
        deterministic: bool = False,
        seed: int = Query(None, ge=0, le=SEED_MAX),
        format: Literal["json", "png"] = "json",  # (gif: image models, whose observations only POST takes)
        session: str = Query(None, pattern=r"^[A-Za-z0-9._-]{1,128}$", description="imagine after this session's steps"),
    ):
        """Imagined rollouts of the policy through the world model (`format=png`: the preview picture)."""
        def observation(runtime):
            if len(runtime.manifest.observation_space.shape) != 1:
                raise InputError("obs", "GET takes vector observations; POST /imagine takes any observation")
            return inputs.observation_batch(inputs.csv_observation(obs), runtime.manifest.observation_space, "obs",
                                            batched=False)
        return await self._imagine(ImagineCall(observation, horizon, samples, deterministic, seed, session=session), format)

    async def imagine_post(self, raw: Request):
        """Imagined rollouts of the policy, or of the client's `actions` plan, through the world model."""
        request = await parse(raw, ImagineRequest)
        observation = lambda runtime: inputs.observation_batch(  # noqa: E731
            request.obs, runtime.manifest.observation_space, "obs", batched=False)
        return await self._imagine(ImagineCall(observation, request.horizon, request.samples, request.deterministic,
                                               request.seed, request.actions, pair(request.history),
                                               frames=request.format == "gif"), request.format)

    # -------------------------------------------------------------- experience
    async def upload(self, raw: Request):
        """Episode fragments acted by the client, for the trainer: durable in the experience log when
        the answer comes; a retried fragment (same episode and index) is stored once."""
        body = await parse(raw, ExperienceUpload)
        stored = await self.calls.upload(uploaded(f, f"fragments[{i}]") for i, f in enumerate(body.fragments))
        return json_response({
            "fragments": [{"episode": f.episode, "index": f.index, "seq": seq, "stored": new} for f, seq, new in stored],
            "steps": sum(f.steps for f, _, new in stored if new)})

    # -------------------------------------------------------------- status
    async def model(self):
        """The served bundle's manifest, when it was loaded, and the run's training progress."""
        return json_response(self.calls.model())

    async def healthz(self):
        """Alive; and whether the data endpoints want a bearer token (the live page asks for one only then)."""
        return {"status": "ok", "token_required": self.settings.api_token is not None}

    async def readyz(self):
        runtime = self.calls.store.current
        if runtime is None:
            return error_response(503, f"no bundle loaded yet from {self.settings.models}", None, {"Retry-After": "1"})
        return json_response({"status": "ready", "model_version": runtime.version})

    async def prometheus(self):
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def live_numbers(self):
        """Everything the live page shows, for scripts too: training curves, phases and failure modes,
        served / newest / best versions, reloads, requests, errors and latency per endpoint and transport."""
        return json_response(await anyio.to_thread.run_sync(live, self.calls.store, self.metrics, self.settings, self.rows,
                                                            len(self.calls.sessions)))

    async def page(self):
        """The live page: static, no data in it (the data comes from /live, with the token if one is set)."""
        return Response(PAGE.read_bytes(), media_type="text/html; charset=utf-8")


def create_app(calls: Calls, metrics: ServiceMetrics) -> FastAPI:
    """The FastAPI app over the process's call layer: routes, their documentation, tokens and error handling."""
    settings = calls.settings
    # FastAPI's own OpenTelemetry is off: the service's metrics are Prometheus' (/metrics), and the
    # hot paths never pass through FastAPI's stack, so its telemetry would see only the cold routes.
    app = FastAPI(title="Reverie", version=reverie.__version__, telemetry={"tracing": False, "metrics": False, "logs": False},
                  description="A world-model agent: actions, values and imagined rollouts from the newest exported bundle.")
    bearer = HTTPBearer(auto_error=False, description="set when the server has REVERIE_API_TOKEN")

    def authorized(request: Request, _: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        """The token check; `bearer` is there so that the document describes the scheme."""
        if not settings.token_accepts(request.headers.get("authorization")):
            raise FieldError(401, "Authorization", "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorized)] if settings.api_token else []  # the document asks for a token only when one is needed

    def may_write(request: Request, _: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        """Writing experience takes the experience token when the server has one: 401 without any
        token, 403 with one that may only read."""
        header = request.headers.get("authorization")
        if settings.writer_accepts(header):
            return
        if header is None or not settings.token_accepts(header):
            raise FieldError(401, "Authorization", "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        raise FieldError(403, "Authorization", "this token may act but not write experience: send the experience token")

    def hot_post(path: str, endpoint, model: type[BaseModel], **doc) -> None:
        """A POST route on every client's per-step path (see hot.py): its body is parsed by `parse`,
        its token checked here, since the hot paths skip FastAPI's dependencies."""
        @functools.wraps(endpoint)
        async def checked(request: Request):
            authorized(request, None)
            return await endpoint(request)

        app.router.add_api_route(path, checked if settings.api_token else endpoint, methods=["POST"],
                                 dependencies=guarded, openapi_extra=body_of(model), route_class_override=HotRoute, **doc)

    add_error_handlers(app)
    rest = Endpoints(calls, metrics)
    hot_post("/act", rest.act, ActRequest, response_model=ActResponse | ActBatchResponse, responses=ACT_ERRORS)
    hot_post("/value", rest.value, ObservationRequest, response_model=ValueResponse | ValueBatchResponse, responses=ERRORS)
    app.get("/imagine", response_model=ImagineResponse, dependencies=guarded, responses={**ERRORS, **PNG})(rest.imagine_get)
    hot_post("/imagine", rest.imagine_post, ImagineRequest, response_model=ImagineResponse, responses={**ERRORS, **PNG})
    writer = [Depends(may_write)] if settings.api_token or settings.experience_token else []
    app.post("/experience", response_model=ExperienceResponse, dependencies=writer, responses=WRITE_ERRORS,
             openapi_extra=body_of(ExperienceUpload))(rest.upload)
    app.get("/model", dependencies=guarded, responses=ERRORS)(rest.model)
    app.get("/healthz")(rest.healthz)
    app.get("/readyz", responses={503: {"model": Error}})(rest.readyz)
    app.get("/metrics", dependencies=guarded, responses={**ERRORS, **METRICS})(rest.prometheus)
    app.get("/live", dependencies=guarded, responses=ERRORS)(rest.live_numbers)
    app.get("/", include_in_schema=False)(rest.page)

    openapi.install(app, calls.store, settings, BODIES)
    app.state.settings, app.state.metrics = settings, metrics
    return app
