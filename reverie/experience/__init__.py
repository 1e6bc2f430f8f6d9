"""Experience from served clients: the record format, and the durable log the server writes before
acknowledging it and trainers tail into their replay buffers. Torch-free, numpy + standard library."""

from __future__ import annotations

from reverie.experience.records import Fragment, decode, encode
from reverie.experience.segments import LogError, ReadResult, SegmentLog, SegmentReader

__all__ = ["Fragment", "LogError", "ReadResult", "SegmentLog", "SegmentReader", "decode", "encode"]
