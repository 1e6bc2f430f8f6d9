"""Service settings: one pydantic-settings model. Every setting is a `reverie serve` / `reverie up` flag
(`--max-batch`) and an environment variable (`REVERIE_MAX_BATCH`); a flag wins over the variable, the
variable over the default. The two tokens are variables only, so that they never show in a process list."""

from __future__ import annotations

import hmac
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from reverie.objectstore import is_store_url

ENV_PREFIX = "REVERIE_"
SECRETS = ("api_token", "experience_token")  # from the environment only
ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s?#]+")  # what a browser sends as `Origin`


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX)

    models: Path | str = Field(description="a run directory, its export folder, or one bundle; or s3://BUCKET/PREFIX, "
                               "an export folder on object storage (endpoint and credentials from the AWS_* variables)")
    host: str = Field("127.0.0.1", description="the address both front ends listen on")
    port: int = Field(8000, ge=0, le=65535, description="the REST port")
    grpc_port: int = Field(50051, ge=0, le=65535, description="the gRPC port")
    api_token: str | None = Field(None, description="bearer token required on every non-health endpoint")
    max_body_bytes: int = Field(4 << 20, ge=1024, description="larger request bodies get a 413 before they are read")
    max_batch: int = Field(1024, ge=1, description="observations per batched request")
    max_samples: int = Field(64, ge=1, description="imagined trajectories per /imagine request")
    follow: Literal["latest", "best"] = Field("latest", description="serve the newest export, or the best-evaluated one")
    poll_interval: float = Field(0.5, gt=0, description="seconds between checks for a newer bundle")
    session_memory_mb: float = Field(64.0, gt=0, description="all sessions' histories together stay within this; "
                                     "the least recently used session leaves first")
    session_ttl_s: float = Field(600.0, gt=0, description="a session unused this long is forgotten")
    sessions: str | None = Field(None, description="where sessions live: None, this process's memory (a session's "
                                 "steps must reach this replica); or redis://HOST:PORT[/DB], shared by every replica, so a "
                                 "round-robin balancer may send each step anywhere and a replica that dies loses no session")
    experience: str | None = Field(None, description="the experience log (clients' episodes for the trainer): a folder "
                                   "of segment files, or redis://HOST:PORT[/DB][?stream=NAME] shared by several servers; "
                                   "None: this server takes no experience")
    experience_token: str | None = Field(None, description="bearer token required to write experience; "
                                         "without one, writing needs what reading does")
    max_fragment_steps: int = Field(1000, ge=1, description="steps in one uploaded fragment")
    reward_bound: float = Field(1e6, gt=0, description="a reported reward's largest magnitude")
    cors_origins: list[str] = Field(default_factory=list, description="origins whose pages may call the REST API "
                                    "(`scheme://host[:port]`, or `*` for any); none: no CORS headers at all")

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, value):
        """s3://... stays a URL; anything else is a local path."""
        return value if is_store_url(value) else Path(value)

    @field_validator("api_token", "experience_token", mode="before")
    @classmethod
    def _unset_when_empty(cls, value):
        """`REVERIE_API_TOKEN=` (empty) means no token, not an empty one that nothing could match."""
        return value or None

    @field_validator("experience", mode="before")
    @classmethod
    def _folder_as_text(cls, value):
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        """A browser's `Origin` header is `scheme://host[:port]`, no path: a trailing slash is dropped,
        anything else that could never match is refused, so that a typo is not a silent no-op."""
        checked = []
        for origin in origins:
            origin = origin.strip().rstrip("/").lower()  # browsers send scheme and host in lower case
            if origin != "*" and not ORIGIN.fullmatch(origin):
                raise ValueError(f"CORS origin {origin!r} is not scheme://host[:port] (e.g. http://localhost:3000) or *")
            checked.append(origin)
        return checked

    def token_accepts(self, authorization: str | None) -> bool:
        """Whether an `Authorization` header (REST) or metadata value (gRPC) carries the token (or the
        experience token: a client that may teach may act)."""
        return (self.api_token is None or _bearer(authorization, self.api_token)
                or (self.experience_token is not None and _bearer(authorization, self.experience_token)))

    def writer_accepts(self, authorization: str | None) -> bool:
        """Whether it may write experience: the experience token when there is one, else what reading takes."""
        if self.experience_token is None:
            return self.token_accepts(authorization)
        return _bearer(authorization, self.experience_token)


def _bearer(authorization: str | None, token: str) -> bool:
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())
