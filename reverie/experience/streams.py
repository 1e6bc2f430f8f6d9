"""The experience log on Redis Streams, for more than one server: every `reverie serve` replica
appends to one stream, and one trainer tails it.

    redis://HOST:PORT[/DB][?stream=NAME]          (NAME default: reverie:experience)

Positions are the same integers as the segment log's: one Lua script, atomic in Redis, checks a
record's key (a retried upload is stored once, for `dedup_seconds`), takes the next number from a
counter and adds the entry under the stream ID `<number>-1`. So numbers have no gaps, and a reader
that finds the stream trimmed past its position knows how many records it missed.

An append is acknowledged once Redis has applied it; whether that survives a crash of Redis itself
is Redis's persistence setting (`appendonly yes` with `appendfsync always` syncs every write).
"""

from __future__ import annotations

from typing import Sequence
from urllib.parse import parse_qs, urlsplit, urlunsplit

from reverie.experience.segments import LogError, ReadResult

DEFAULT_STREAM = "reverie:experience"

# KEYS: stream, counter, one dedup key per record; ARGV: max entries, dedup seconds, then each
# record's key and payload. Returns each record's number and whether it was stored (1) or a retry (0).
_APPEND = """
local out = {}
for i = 3, #KEYS do
  local seen = redis.call('GET', KEYS[i])
  if seen then
    out[#out + 1] = tonumber(seen)
    out[#out + 1] = 0
  else
    local seq = redis.call('INCR', KEYS[2]) - 1
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], seq .. '-1', 'k', ARGV[2 * i - 3], 'p', ARGV[2 * i - 2])
    redis.call('SET', KEYS[i], seq, 'EX', ARGV[2])
    out[#out + 1] = seq
    out[#out + 1] = 1
  end
end
return out
"""


def is_redis(spec: str) -> bool:
    return str(spec).startswith("redis://")


def _connect(url: str):
    """A client for `url` (its `stream` query removed) and the stream's name."""
    import redis  # only a Redis-backed log needs the client

    parts = urlsplit(url)
    query = parse_qs(parts.query)
    stream = query.pop("stream", [DEFAULT_STREAM])[-1]
    rest = "&".join(f"{k}={v}" for k, values in query.items() for v in values)
    client = redis.Redis.from_url(urlunsplit(parts._replace(query=rest)), socket_timeout=10)
    try:
        client.ping()
    except redis.RedisError as error:
        raise LogError(f"experience log {url}: cannot reach Redis: {error}") from None
    return client, stream


class StreamLog:
    """The writer side; any number of them, in any processes, may share one stream."""

    def __init__(self, url: str, max_records: int = 10_000_000, dedup_seconds: int = 7 * 86_400):
        self.url = url
        self.redis, self.stream = _connect(url)
        self.max_records, self.dedup_seconds = max_records, dedup_seconds
        self._append = self.redis.register_script(_APPEND)

    def append(self, records: Sequence[tuple[bytes, bytes]]) -> list[tuple[int, bool]]:
        """(number, stored) per record, once Redis has applied them all."""
        import redis

        if not records:
            return []
        keys = [self.stream, f"{self.stream}:seq", *(f"{self.stream}:key:".encode() + key for key, _ in records)]
        args = [self.max_records, self.dedup_seconds, *(part for record in records for part in record)]
        try:
            out = self._append(keys=keys, args=args)
        except redis.RedisError as error:
            raise LogError(f"experience log {self.url}: {error}") from None
        return [(int(out[i]), bool(out[i + 1])) for i in range(0, len(out), 2)]

    def close(self) -> None:
        self.redis.close()

    def __enter__(self) -> StreamLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StreamReader:
    """A trainer's tail of the stream, by record number (as `SegmentReader`)."""

    def __init__(self, url: str):
        self.redis, self.stream = _connect(url)

    def read(self, from_seq: int, max_records: int = 1024, max_bytes: int = 64 << 20) -> ReadResult:
        if from_seq < 0 or max_records < 1:
            raise ValueError("from_seq must be >= 0 and max_records >= 1")
        with self.redis.pipeline(transaction=True) as pipe:  # one view: no append lands between the two
            entries, written = pipe.xrange(self.stream, min=f"{from_seq}-0", count=max_records).get(
                f"{self.stream}:seq").execute()
        records, size = [], 0
        for entry_id, fields in entries:
            size += len(fields[b"k"]) + len(fields[b"p"])
            if records and size > max_bytes:
                break
            records.append((int(entry_id.split(b"-")[0]), fields[b"k"], fields[b"p"]))
        if records:
            return ReadResult(records, records[-1][0] + 1, records[0][0] - from_seq)  # trimmed before the first
        written = int(written or 0)
        return ReadResult([], max(from_seq, written), max(0, written - from_seq))  # all trimmed, or nothing new
