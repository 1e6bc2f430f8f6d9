"""A small typed REST client for the Reverie service (httpx; no torch, no onnxruntime).

    client = RestClient("http://127.0.0.1:8000")
    step = client.act(obs, deterministic=True)      # step.action is ready for env.step
    plan = client.imagine(obs, horizon=15, samples=4)

An agent with memory (the manifest's `history_length` > 0) reads the steps before `obs` too: pass
`history=` (a `reverie.history.Recent` of the episode's observations and the actions taken, or an
(observations, actions) pair), or `session="my-id"` with `reset=True` on each episode's first step.
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import httpx
import numpy as np


class ApiError(Exception):
    """A 4xx/5xx answer: `status`, the server's `detail`, and the `field` it names."""

    def __init__(self, status: int, detail: str, field: str | None):
        super().__init__(f"{status} {field + ': ' if field else ''}{detail}")
        self.status, self.detail, self.field = status, detail, field


@dataclass
class Action:
    action: Any  # int for Discrete, list of floats for Box: what env.step takes
    value: float
    model_version: int
    probs: list[float] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    session_step: int | None = None  # in a session (or on a gRPC stream): this step's index in its episode


@dataclass
class Trajectory:
    states: np.ndarray
    actions: list
    rewards: np.ndarray
    continues: np.ndarray
    values: np.ndarray
    lambda_return: np.ndarray
    disagreement: np.ndarray  # the dynamics ensemble's doubt about each imagined state


@dataclass
class Imagination:
    model_version: int
    horizon: int
    trajectories: list[Trajectory] = field(default_factory=list)


def _given(**fields) -> dict:
    """The request body without the fields left unset (the server refuses explicit nulls)."""
    return {k: v for k, v in fields.items() if v is not None}


def _listed(obs, image_format: str = "png"):
    """An observation as the request carries it: JSON numbers, or a frame (uint8 [H, W, C]) as a
    base64 PNG file (`image_format` "png"), raw pixels ("raw") or numbers ("json")."""
    if isinstance(obs, np.ndarray) and obs.dtype == np.uint8 and obs.ndim == 3 and image_format != "json":
        if image_format == "raw":
            return {"data": base64.b64encode(np.ascontiguousarray(obs).tobytes()).decode("ascii"), "shape": list(obs.shape)}
        return {"image": png_base64(obs)}
    return np.asarray(obs, dtype=np.float64).tolist() if isinstance(obs, np.ndarray) else list(obs)


def png_base64(frame: np.ndarray) -> str:
    """uint8 [H, W, 3] -> base64 of a PNG file (lossless, so the server sees the frame exactly)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def steps_of(history) -> tuple[list, list] | None:
    """A `Recent` or an (observations, actions) pair -> (observations, env actions) lists; None stays None."""
    if history is None:
        return None
    observations, actions = (history.observations, history.actions) if hasattr(history, "observations") else history
    return list(observations), [a.tolist() if isinstance(a, np.ndarray) else a for a in actions]


RETRIED_STATUS = (502, 503, 504)  # a balancer whose replica went away, or a server not ready yet


class RestClient:
    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, timeout: float = 10.0,
                 image_format: str = "png", retries: int = 2):
        """`image_format`: how frames (uint8 [H, W, C] arrays) travel: "png", "raw" (base64 pixels) or "json".

        `retries`: how many more times a request that is safe to repeat is sent after the connection
        failed or a balancer answered 502/503/504 (its replica gone): every call but a session's `act`,
        which moves the session (and may log a reported step) and so is never sent twice. Uploads are
        safe: the log keeps a fragment once however often it arrives."""
        if image_format not in ("png", "raw", "json"):
            raise ValueError(f"image_format must be png, raw or json, not {image_format!r}")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout)
        self.image_format = image_format
        self.retries = retries

    def _obs(self, obs):
        return _listed(obs, self.image_format)

    def _history(self, history) -> dict | None:
        steps = steps_of(history)
        return None if steps is None else {"observations": [self._obs(o) for o in steps[0]], "actions": steps[1]}

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "RestClient":
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def _call(self, method: str, path: str, safe: bool = True, **kwargs) -> httpx.Response:
        for attempt in range(self.retries + 1 if safe else 1):
            last = attempt == self.retries or not safe
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError:
                if last:
                    raise
                time.sleep(0.05 * 2**attempt)
                continue
            if response.status_code not in RETRIED_STATUS or last:
                break
            time.sleep(0.05 * 2**attempt)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"detail": response.text}
            raise ApiError(response.status_code, str(body.get("detail")), body.get("field"))
        return response

    # ------------------------------------------------------------------ agent
    def act(self, obs, deterministic: bool = False, seed: int | None = None, history=None,
            session: str | None = None, reset: bool = False, reward: float | None = None,
            terminated: bool = False, truncated: bool = False, evaluate: bool = False) -> Action:
        """In a `session`, `reward` (and `terminated` / `truncated`) report what followed the session's
        previous action, `obs` being what followed it: the server logs that transition for the trainer.
        `evaluate` with `reset`: the episode it starts is an evaluation (one model version, deterministic)."""
        body = _given(obs=self._obs(obs), deterministic=deterministic, seed=seed, history=self._history(history),
                      session=session, reset=reset or None, reward=None if reward is None else float(reward),
                      terminated=bool(terminated) or None, truncated=bool(truncated) or None, evaluate=evaluate or None)
        return Action(**self._call("POST", "/act", safe=session is None, json=body).json())

    def act_batch(self, observations: Sequence, deterministic: bool = False, seed: int | None = None) -> list[Action]:
        body = _given(observations=[self._obs(o) for o in observations], deterministic=deterministic, seed=seed)
        answer = self._call("POST", "/act", json=body).json()
        params = {k: answer[k] for k in ("probs", "mean", "std") if k in answer}
        return [Action(a, v, answer["model_version"], **{k: p[i] for k, p in params.items()})
                for i, (a, v) in enumerate(zip(answer["actions"], answer["values"]))]

    def value(self, obs, history=None, session: str | None = None) -> tuple[float, int]:
        body = _given(obs=self._obs(obs), history=self._history(history), session=session)
        answer = self._call("POST", "/value", json=body).json()
        return answer["value"], answer["model_version"]

    def values(self, observations: Sequence) -> tuple[list[float], int]:
        answer = self._call("POST", "/value", json={"observations": [self._obs(o) for o in observations]}).json()
        return answer["values"], answer["model_version"]

    def _imagine_body(self, obs, horizon, samples, deterministic, seed, actions, fmt, history=None) -> dict:
        return _given(obs=self._obs(obs), horizon=horizon, samples=samples, deterministic=deterministic, seed=seed,
                      actions=actions, format=fmt, history=self._history(history))

    def imagine(self, obs, horizon: int | None = None, samples: int = 1, deterministic: bool = False,
                seed: int | None = None, actions: list | None = None, history=None,
                session: str | None = None) -> Imagination:
        """Imagined rollouts of the policy, or of an `actions` plan, from one observation (after its
        `history`, or a `session`'s steps: a vector observation then, by GET /imagine)."""
        if session is not None:
            params = _given(obs=",".join(repr(float(x)) for x in np.ravel(obs)), horizon=horizon, samples=samples,
                            deterministic=deterministic, seed=seed, session=session)
            if actions is not None or history is not None:
                raise ValueError("a session's imagination (GET /imagine) takes no plan and no history")
            answer = self._call("GET", "/imagine", params=params).json()
        else:
            body = self._imagine_body(obs, horizon, samples, deterministic, seed, actions, "json", history)
            answer = self._call("POST", "/imagine", json=body).json()
        trajectories = [Trajectory(np.asarray(t["states"]), t["actions"], np.asarray(t["rewards"]),
                                   np.asarray(t["continues"]), np.asarray(t["values"]), np.asarray(t["lambda_return"]),
                                   np.asarray(t["disagreement"]))
                        for t in answer["trajectories"]]
        return Imagination(answer["model_version"], answer["horizon"], trajectories)

    def preview(self, obs, horizon: int | None = None, samples: int = 4, seed: int | None = None,
                    actions: list | None = None, fmt: str = "png") -> bytes:
        """The PNG a person looks at to judge a plan (an image model's filmstrip); `fmt="gif"`: its animation."""
        body = self._imagine_body(obs, horizon, samples, False, seed, actions, fmt)
        return self._call("POST", "/imagine", json=body).content

    # ------------------------------------------------------------------ experience
    def upload(self, fragments: Sequence[dict]) -> list[dict]:
        """Episode fragments acted here (e.g. with the bundle's ONNX graphs), for the trainer: each a dict
        of `episode`, `index`, `observations` (steps + 1: each step's, then the one after the last),
        `actions` (as `act` gives them), `rewards`, and optionally `model_versions`, `terminated`,
        `truncated`. Returns each fragment's `{episode, index, seq, stored}`: durable on the server by
        then; a retried fragment is stored once (`stored` false)."""
        def body(f: dict) -> dict:
            observations, n = f["observations"], len(f["rewards"])
            versions = f.get("model_versions", [-1] * n)
            steps = [{"obs": self._obs(observations[i]), "reward": float(f["rewards"][i]), "model_version": int(versions[i]),
                      "action": f["actions"][i].tolist() if isinstance(f["actions"][i], np.ndarray) else f["actions"][i]}
                     for i in range(n)]
            return _given(episode=f["episode"], index=f["index"], steps=steps, next_obs=self._obs(observations[n]),
                          terminated=f.get("terminated"), truncated=f.get("truncated"))

        return self._call("POST", "/experience", json={"fragments": [body(f) for f in fragments]}).json()["fragments"]

    # ------------------------------------------------------------------ status
    def model(self) -> dict:
        return self._call("GET", "/model").json()

    def ready(self) -> bool:
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.http.base_url} not ready after {timeout:.0f} s")
            time.sleep(0.2)
