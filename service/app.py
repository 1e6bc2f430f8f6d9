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

from . import inputs, openapi, preview
from .batching import ActBatcher
from .experience import ExperienceLog, NoExperience, check_fragment
from .guard import Guard
from .hot import HotPaths, HotRoute
from .responses import error_response, json_response
from reverie.errors import InputError
from .live import PAGE, MetricRows, live
from .metrics import ServiceMetrics
from .requests import (WriteDenied, evaluation, failure_status, finish_step, imagination_args, json_observations, model_info,
                       outcome, request_memory)
from .runtime import Runtime
from .schemas import (OBSERVATION_FORMS, SEED_MAX, ActBatchResponse, ActRequest, ActResponse, Error, ExperienceResponse,
                      ExperienceUpload, ImagineRequest, ImagineResponse, ObservationRequest, ValueBatchResponse, ValueResponse)
from .sessions import Sessions
from .settings import ServiceSettings
from .store import ModelStore, NotReady

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


def create_app(store: ModelStore, settings: ServiceSettings) -> FastAPI:
    # FastAPI's own OpenTelemetry is off: the service's metrics are Prometheus' (/metrics), and the
    # hot paths never pass through FastAPI's stack, so its telemetry would see only the cold routes.
    app = FastAPI(title="Reverie", version=reverie.__version__, telemetry={"tracing": False, "metrics": False, "logs": False},
                  description="A world-model agent: actions, values and imagined rollouts from the newest exported bundle.")
    sessions = Sessions(int(settings.session_memory_mb * 2**20), settings.session_ttl_s)
    metrics = ServiceMetrics(store, sessions)
    batcher = ActBatcher(metrics.act_requests_per_call)
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

    experience = ExperienceLog(settings.experience) if settings.experience is not None else None

    def hot_post(path: str, model: type[BaseModel], **doc):
        """A POST route on every client's per-step path (see hot.py): its body is parsed by `parse`,
        its token checked here, since the hot paths skip FastAPI's dependencies."""
        def register(endpoint):
            @functools.wraps(endpoint)
            async def checked(request: Request):
                authorized(request, None)
                return await endpoint(request)

            app.router.add_api_route(path, checked if settings.api_token else endpoint, methods=["POST"],
                                     dependencies=guarded, openapi_extra=body_of(model), route_class_override=HotRoute, **doc)
            return endpoint
        return register

    add_error_handlers(app)

    # -------------------------------------------------------------- agent
    @hot_post("/act", ActRequest, response_model=ActResponse | ActBatchResponse, responses=ACT_ERRORS)
    async def act(raw: Request):
        """An action for one observation (`obs`) or for each of a batch (`observations`)."""
        request = await parse(raw, ActRequest)
        runtime = store.require()
        obs, batched = json_observations(request.obs, request.observations, runtime, settings.max_batch)
        history, session = request_memory(runtime, sessions, batched, pair(request.history), request.session,
                                          request.reset, acting=True)
        transition = outcome(session, request.reward, request.terminated, request.truncated, obs, runtime, settings,
                             lambda: settings.writer_accepts(raw.headers.get("authorization")), experience)
        runtime = evaluation(session, request.evaluate, request.reset, runtime, store)
        deterministic = request.deterministic or (session is not None and session.pinned is not None)
        result = await batcher.act(runtime, obs, deterministic, request.seed, history)
        params = {k: v for k in ("probs", "mean", "std") if (v := getattr(result, k)) is not None}
        if batched:
            return json_response({"actions": result.actions, "values": result.values,
                                  "model_version": runtime.version, **params})
        answer = {"action": result.actions[0], "value": float(result.values[0]), "model_version": runtime.version,
                  **{k: v[0] for k, v in params.items()}}
        if transition is not None:
            await experience.store_async([transition])  # durable before the answer
        if session is not None:
            answer["session_step"] = finish_step(session, transition, lambda: sessions.record(
                request.session, session, obs[0], result.agent_actions[0], runtime.version))
        return json_response(answer)

    @hot_post("/value", ObservationRequest, response_model=ValueResponse | ValueBatchResponse, responses=ERRORS)
    async def value(raw: Request):
        """The critic's value of one observation or of each of a batch."""
        request = await parse(raw, ObservationRequest)
        runtime = store.require()
        obs, batched = json_observations(request.obs, request.observations, runtime, settings.max_batch)
        history, _ = request_memory(runtime, sessions, batched, pair(request.history), request.session, False, acting=False)
        values = runtime.value(obs, history)
        if batched:
            return json_response({"values": values, "model_version": runtime.version})
        return json_response({"value": float(values[0]), "model_version": runtime.version})

    async def imagine(runtime: Runtime, obs, horizon, samples, deterministic, seed, actions, fmt,
                      history: tuple | None, session: str | None) -> Response:
        horizon, samples, plan = imagination_args(runtime, settings, horizon, samples, actions)
        if fmt == "gif" and len(runtime.manifest.observation_space.shape) != 3:
            raise InputError("format", "gif animates an image model's imagined frames; this model's preview is png")
        batch = inputs.observation_batch(obs, runtime.manifest.observation_space, "obs", batched=False)
        remembered, _ = request_memory(runtime, sessions, False, history, session, False, acting=False)
        result = runtime.imagine(batch, horizon, samples, deterministic, seed, plan, remembered)
        if fmt != "json":
            picture = await anyio.to_thread.run_sync(preview.render, runtime, result, fmt)
            return Response(picture, media_type=f"image/{fmt}", headers={"X-Model-Version": str(runtime.version)})
        trajectories = [{"states": result.states[i], "actions": result.actions[i], "rewards": result.rewards[i],
                         "continues": result.continues[i], "values": result.values[i],
                         "lambda_return": result.lambda_return[i], "disagreement": result.disagreement[i]}
                        for i in range(samples)]
        return json_response({"model_version": runtime.version, "horizon": horizon, "trajectories": trajectories})

    @app.get("/imagine", response_model=ImagineResponse, dependencies=guarded, responses={**ERRORS, **PNG})
    async def imagine_get(
        obs: str = Query(description="one vector observation, comma-separated"),
        horizon: int = Query(None, ge=1),
        samples: int = Query(1, ge=1),
        deterministic: bool = False,
        seed: int = Query(None, ge=0, le=SEED_MAX),
        format: Literal["json", "png"] = "json",  # (gif: image models, whose observations only POST takes)
        session: str = Query(None, pattern=r"^[A-Za-z0-9._-]{1,128}$", description="imagine after this session's steps"),
    ):
        """Imagined rollouts of the policy through the world model (`format=png`: the preview picture)."""
        runtime = store.require()
        if len(runtime.manifest.observation_space.shape) != 1:
            raise InputError("obs", "GET takes vector observations; POST /imagine takes any observation")
        return await imagine(runtime, inputs.csv_observation(obs), horizon, samples, deterministic, seed, None, format,
                             None, session)

    @hot_post("/imagine", ImagineRequest, response_model=ImagineResponse, responses={**ERRORS, **PNG})
    async def imagine_post(raw: Request):
        """Imagined rollouts of the policy, or of the client's `actions` plan, through the world model."""
        request = await parse(raw, ImagineRequest)
        runtime = store.require()
        return await imagine(runtime, request.obs, request.horizon, request.samples, request.deterministic,
                             request.seed, request.actions, request.format, pair(request.history), None)

    # -------------------------------------------------------------- experience
    writer = [Depends(may_write)] if settings.api_token or settings.experience_token else []

    @app.post("/experience", response_model=ExperienceResponse, dependencies=writer, responses=WRITE_ERRORS,
              openapi_extra=body_of(ExperienceUpload))
    async def upload(raw: Request):
        """Episode fragments acted by the client, for the trainer: durable in the experience log when
        the answer comes; a retried fragment (same episode and index) is stored once."""
        body = await parse(raw, ExperienceUpload)
        if experience is None:
            raise NoExperience()
        runtime = store.require()
        fragments = [check_fragment(f, runtime, settings, f"fragments[{i}]") for i, f in enumerate(body.fragments)]
        results = await experience.store_async(fragments)
        return json_response({
            "fragments": [{"episode": f.episode, "index": f.index, "seq": seq, "stored": stored}
                          for f, (seq, stored) in zip(fragments, results)],
            "steps": sum(f.steps for f, (_, stored) in zip(fragments, results) if stored)})

    # -------------------------------------------------------------- status
    @app.get("/model", dependencies=guarded, responses=ERRORS)
    async def model():
        """The served bundle's manifest, when it was loaded, and the run's training progress."""
        return json_response(model_info(store, settings))

    @app.get("/healthz")
    async def healthz():
        """Alive; and whether the data endpoints want a bearer token (the live page asks for one only then)."""
        return {"status": "ok", "token_required": settings.api_token is not None}

    @app.get("/readyz", responses={503: {"model": Error}})
    async def readyz():
        runtime = store.current
        if runtime is None:
            return error_response(503, f"no bundle loaded yet from {settings.models}", None, {"Retry-After": "1"})
        return json_response({"status": "ready", "model_version": runtime.version})

    @app.get("/metrics", dependencies=guarded, responses={**ERRORS, **METRICS})
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    rows = MetricRows()

    @app.get("/live", dependencies=guarded, responses=ERRORS)
    async def live_numbers():
        """Everything the live page shows, for scripts too: training curves, phases and failure modes,
        served / newest / best versions, reloads, requests, errors and latency per endpoint and transport."""
        return json_response(await anyio.to_thread.run_sync(live, store, metrics, settings, rows, len(sessions)))

    @app.get("/", include_in_schema=False)
    async def page():
        """The live page: static, no data in it (the data comes from /live, with the token if one is set)."""
        return Response(PAGE.read_bytes(), media_type="text/html; charset=utf-8")

    openapi.install(app, store, settings, BODIES)
    app.state.store, app.state.metrics, app.state.settings, app.state.sessions = store, metrics, settings, sessions
    app.state.experience = experience
    return app
