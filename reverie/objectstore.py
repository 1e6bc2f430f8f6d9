"""Bundles on S3-compatible object storage: `s3://BUCKET/PREFIX` holds an export folder's layout.

    s3://BUCKET/PREFIX/v000007/{manifest.json, *.onnx}   immutable versions
    s3://BUCKET/PREFIX/evaluations.json                  every version's evaluation (reverie.bundle)
    s3://BUCKET/PREFIX/BEST, LATEST                      pointers, written last

`Publisher` (the trainer, `--publish`) makes the store match a local export folder: versions the
store lacks are uploaded graphs first and manifest last, then evaluations.json, then BEST and LATEST;
versions pruned locally are deleted only after the pointers moved. A reader that sees a pointer finds
every file of the version it names.

`Mirror` (the server, `--models s3://...`) keeps a local copy of what the store's pointers name: one
listing of the prefix's top level per poll (one small request when nothing changed); a pointer or
evaluations that changed bring the versions they name down into a staging folder, renamed into
place when complete, and the versions no pointer names any more are removed. The model store then loads them from the mirror as from any export folder, so checksums
are verified there and a bad version is refused with the last good one still served.

Endpoint and credentials come from the standard AWS variables (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`) through boto3.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .bundle import BEST, EVALUATIONS, POINTER, VERSION_DIR, versions

log = logging.getLogger("reverie.objectstore")
SCHEME = "s3://"
TOP_LEVEL = (EVALUATIONS, BEST, POINTER)  # written in this order, after the versions they name


class StoreError(Exception):
    """The object store cannot be used: unreachable, no such bucket, or credentials refused."""


@dataclass(frozen=True)
class Location:
    bucket: str
    prefix: str  # "" or ending in "/"

    @classmethod
    def parse(cls, url: str) -> "Location":
        if not url.startswith(SCHEME):
            raise ValueError(f"expected {SCHEME}BUCKET[/PREFIX], got {url!r}")
        bucket, _, prefix = url[len(SCHEME):].partition("/")
        if not bucket:
            raise ValueError(f"expected {SCHEME}BUCKET[/PREFIX], got {url!r}: no bucket")
        prefix = prefix.strip("/")
        return cls(bucket, prefix + "/" if prefix else "")

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}"

    def key(self, name: str) -> str:
        return self.prefix + name


def is_store_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(SCHEME)


def _client():
    import boto3
    from botocore.config import Config

    # Short timeouts and no retry storm: a poll that fails is tried again at the next one.
    return boto3.client("s3", config=Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 2}))


def _explain(err: Exception, where: Location) -> StoreError:
    """The reason an operator can act on, from boto3's error."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    if isinstance(err, NoCredentialsError):
        return StoreError(f"{where}: no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket", "404"):
            return StoreError(f"{where}: bucket {where.bucket!r} does not exist")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            return StoreError(f"{where}: credentials refused ({code}): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        return StoreError(f"{where}: {code or err}")
    if isinstance(err, BotoCoreError):  # connection refused, DNS, timeout
        endpoint = os.environ.get("AWS_ENDPOINT_URL", "the default AWS endpoint")
        return StoreError(f"{where}: cannot reach the object store at {endpoint}: {err}")
    return StoreError(f"{where}: {err}")


class _Store:
    """The calls both sides make, each failure turned into a StoreError."""

    def __init__(self, url: str):
        from botocore.exceptions import BotoCoreError, ClientError

        self.location = Location.parse(url)
        self.client = _client()
        self._errors = (BotoCoreError, ClientError)
        self.requests = 0  # calls made, for the cost of a poll

    def _call(self, method: str, **kwargs):
        self.requests += 1
        try:
            return getattr(self.client, method)(Bucket=self.location.bucket, **kwargs)
        except self._errors as err:
            raise _explain(err, self.location) from err

    def check(self) -> None:
        """Raise StoreError now (at start) when the bucket cannot be listed."""
        self._call("list_objects_v2", Prefix=self.location.prefix, Delimiter="/", MaxKeys=1)

    def top_level(self) -> tuple[dict[str, str], set[str]]:
        """(top-level file -> ETag, version folder names): one listing."""
        files, folders, token = {}, set(), None
        while True:
            page = self._call("list_objects_v2", Prefix=self.location.prefix, Delimiter="/",
                              **({"ContinuationToken": token} if token else {}))
            for item in page.get("Contents", []):
                files[item["Key"][len(self.location.prefix):]] = item["ETag"]
            for common in page.get("CommonPrefixes", []):
                folders.add(common["Prefix"][len(self.location.prefix):].rstrip("/"))
            token = page.get("NextContinuationToken")
            if not token:
                return files, {f for f in folders if VERSION_DIR.fullmatch(f)}

    def keys(self, folder: str) -> list[str]:
        """Names of the objects in one version folder."""
        names, token, prefix = [], None, self.location.key(folder + "/")
        while True:
            page = self._call("list_objects_v2", Prefix=prefix, **({"ContinuationToken": token} if token else {}))
            names += [item["Key"][len(prefix):] for item in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not token:
                return names

    def get(self, name: str) -> bytes:
        return self._call("get_object", Key=self.location.key(name))["Body"].read()

    def put(self, name: str, body: bytes) -> None:
        self._call("put_object", Key=self.location.key(name), Body=body)

    def delete(self, folder: str) -> None:
        for name in self.keys(folder):
            self._call("delete_object", Key=self.location.key(f"{folder}/{name}"))


class Publisher:
    """Keeps `s3://...` equal to a local export folder (the trainer's `--publish`)."""

    def __init__(self, url: str):
        self.store = _Store(url)

    def check(self) -> None:
        self.store.check()

    def push(self, export_dir: Path) -> list[str]:
        """Upload what the store lacks, move its pointers, delete what was pruned locally: the versions
        uploaded. Safe to repeat: a push that failed halfway is finished by the next."""
        export_dir = Path(export_dir)
        local = {f"v{v:06d}" for v in versions(export_dir)}
        _, remote = self.store.top_level()
        uploaded = []
        for folder in sorted(local - remote):
            files = sorted((export_dir / folder).iterdir(), key=lambda p: (p.name == "manifest.json", p.name))  # manifest last
            for path in files:
                self.store.put(f"{folder}/{path.name}", path.read_bytes())
            uploaded.append(folder)
        for name in TOP_LEVEL:
            if (export_dir / name).is_file():
                self.store.put(name, (export_dir / name).read_bytes())
        for folder in sorted(remote - local):
            self.store.delete(folder)
        return uploaded


class Mirror:
    """A local folder kept equal to `s3://...`, for the model store to load from (`--models s3://...`)."""

    def __init__(self, url: str, folder: Path):
        self.store = _Store(url)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.seen: dict[str, str] = {}  # top-level file -> ETag at the last sync
        self.failing = False

    def check(self) -> None:
        self.store.check()

    def sync(self) -> bool:
        """One poll: True when the mirror changed. A store that is away is logged once and tried again
        at the next poll; what the mirror holds stays served."""
        try:
            changed = self._sync()
        except StoreError as err:
            if not self.failing:
                log.error("object store unavailable, serving what is loaded: %s", err)
            self.failing = True
            return False
        if self.failing:
            log.info("object store %s reachable again", self.store.location)
        self.failing = False
        return changed

    def _sync(self) -> bool:
        files, remote = self.store.top_level()
        if files == self.seen:
            return False
        contents = {name: self.store.get(name) for name in TOP_LEVEL if name in files}
        wanted = {body.decode().strip() for name, body in contents.items() if name != EVALUATIONS}
        for folder in sorted(wanted & remote):
            if not (self.folder / folder / "manifest.json").is_file():
                self._download(folder)
        for name in TOP_LEVEL:  # pointers last, as the publisher wrote them
            if name in contents:
                _write_atomically(self.folder / name, contents[name])
        for stale in {f"v{v:06d}" for v in versions(self.folder)} - wanted:  # a server needs what the pointers name
            shutil.rmtree(self.folder / stale, ignore_errors=True)
        self.seen = files
        return True

    def _download(self, folder: str) -> None:
        staging = self.folder / f".{folder}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        names = self.store.keys(folder)
        if not names:  # deleted since it was listed
            shutil.rmtree(staging)
            return
        for name in names:
            if "/" in name or name.startswith("."):
                raise StoreError(f"{self.store.location}{folder}/{name}: not a bundle file")
            (staging / name).write_bytes(self.store.get(f"{folder}/{name}"))
        os.replace(staging, self.folder / folder)  # complete, or absent
        log.info("mirrored %s%s (%d files)", self.store.location, folder, len(names))


def _write_atomically(path: Path, body: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(body)
    os.replace(tmp, path)
