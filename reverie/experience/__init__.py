"""Experience from served clients: the record format, and the durable log the server writes before
acknowledging it and trainers tail into their replay buffers. Torch-free, numpy + standard library
(+ the redis client for a log on Redis Streams).

A log is named by a folder (segment files, one server) or a `redis://` URL (a stream, any number of
servers); both number records from 0 without gaps, so a reader's position is one integer."""

from __future__ import annotations

from reverie.experience.records import Fragment, decode, encode
from reverie.experience.segments import LogError, ReadResult, SegmentLog, SegmentReader
from reverie.experience.streams import StreamLog, StreamReader, is_redis


def open_log(spec: str) -> SegmentLog | StreamLog:
    """The writer of the log `spec` names."""
    return StreamLog(spec) if is_redis(spec) else SegmentLog(spec)


def open_reader(spec: str) -> SegmentReader | StreamReader:
    """A reader of the log `spec` names."""
    return StreamReader(spec) if is_redis(spec) else SegmentReader(spec)


__all__ = ["Fragment", "LogError", "ReadResult", "SegmentLog", "SegmentReader", "StreamLog", "StreamReader",
           "decode", "encode", "is_redis", "open_log", "open_reader"]
