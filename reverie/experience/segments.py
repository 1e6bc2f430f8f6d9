"""The embedded experience log: append-only segment files in one folder, one writer, many readers.

The server appends a client's records and acknowledges them only once they are durable; trainers
tail the folder with readers, in any process, holding a global sequence number as their position.

A record on disk is `b"RV"`, payload length (u32 LE), key length (u16 LE), CRC32 of those two
fields + key + payload (u32 LE), then key and payload. A segment is named after the sequence
number of its first record, so a record's number is that plus its ordinal in the file: nothing
else needs to be stored, and a crash can only leave a torn record at the tail of the newest file.
"""

from __future__ import annotations

import bisect
import fcntl
import logging
import os
import re
import struct
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Sequence

log = logging.getLogger("reverie.experience")

MAGIC = b"RV"
_FRAME = struct.Struct("<2sIHI")  # magic, payload length, key length, CRC32
_LENGTHS = struct.Struct("<IH")
MAX_KEY = 1024
MAX_PAYLOAD = (1 << 32) - 1
_NAME = re.compile(r"(\d{16})\.seg")


class LogError(Exception):
    """The log cannot do what was asked: locked by another writer, closed, failed, or a bad record."""


def _crc(key: bytes, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(key, zlib.crc32(_LENGTHS.pack(len(payload), len(key)))))


def _frame(key: bytes, payload: bytes) -> bytes:
    return b"".join([_FRAME.pack(MAGIC, len(payload), len(key), _crc(key, payload)), key, payload])


def _read_header(f: BinaryIO, size: int) -> tuple[int, int, int] | None:
    """(key length, payload length, CRC) of the frame at `f`'s position, or None where the magic
    is wrong or the frame does not fit in the file's `size` bytes (checked before reading, so a
    corrupt length never allocates gigabytes)."""
    start = f.tell()
    head = f.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    magic, payload_length, key_length, crc = _FRAME.unpack(head)
    if magic != MAGIC or start + _FRAME.size + key_length + payload_length > size:
        return None
    return key_length, payload_length, crc


def _read_body(f: BinaryIO, header: tuple[int, int, int]) -> tuple[bytes, bytes] | None:
    """(key, payload) after a header, or None where the bytes are short or fail the CRC."""
    key_length, payload_length, crc = header
    key = f.read(key_length)
    payload = f.read(payload_length)
    if len(key) != key_length or len(payload) != payload_length or _crc(key, payload) != crc:
        return None
    return key, payload


def _segments(folder: Path) -> list[tuple[int, Path]]:
    """(first seq, path) of every segment file, oldest first; none while the folder is not made yet
    (a trainer may start tailing before the server's first write)."""
    found = []
    if not folder.is_dir():
        return found
    for entry in os.scandir(folder):
        match = _NAME.fullmatch(entry.name)
        if match:
            found.append((int(match.group(1)), Path(entry.path)))
    return sorted(found)


def _fsync_folder(folder: Path) -> None:
    """A created or truncated file's directory entry is durable only once its folder is synced."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Segment:
    first_seq: int
    path: Path
    size: int = 0
    keys: list[bytes] = field(default_factory=list)  # by ordinal, to forget them on deletion


class SegmentLog:
    """The single writer. `append` returns only once its records are durable, and concurrent
    callers share fsyncs (group commit): whoever finds no flush under way writes everything
    queued and syncs once, the others wait for the flush that covers their records."""

    def __init__(self, folder: str | os.PathLike, segment_bytes: int = 64 << 20,
                 retention_bytes: int = 4 << 30, fsync: bool = True):
        if segment_bytes < 1 or retention_bytes < 1:
            raise ValueError("segment_bytes and retention_bytes must be positive")
        self.folder = Path(folder)
        self.segment_bytes = segment_bytes
        self.retention_bytes = retention_bytes
        self.fsync = fsync
        self.fsyncs = 0
        self.records_written = 0
        self.torn: list[tuple[str, int, int]] = []
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise LogError(f"{self.folder} is already open for writing by another process") from None
        # Every key present or queued, to its seq: a retried upload gets the first copy's seq.
        self._keys: dict[bytes, int] = {}
        try:
            self._segments = self._recover() or [self._create(0)]
            active = self._segments[-1]
            self._fd = os.open(active.path, os.O_WRONLY | os.O_APPEND)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._next_seq = active.first_seq + len(active.keys)
        # Shared under `_cond`: records queued for the next flush, the first seq not yet durable,
        # whether a flush is under way, the error that broke the log, and whether it is closed.
        self._cond = threading.Condition()
        self._queue: list[tuple[int, bytes, bytes]] = []
        self._durable = self._next_seq
        self._flushing = False
        self._failure: BaseException | None = None
        self._closed = False

    def _recover(self) -> list[_Segment]:
        """Scan every segment (CRCs included) for its keys; truncate a torn tail of the newest."""
        found = _segments(self.folder)
        segments = []
        for number, (first_seq, path) in enumerate(found):
            if segments and first_seq < segments[-1].first_seq + len(segments[-1].keys):
                raise LogError(f"segment {path.name} overlaps the records of {segments[-1].path.name}")
            segment = _Segment(first_seq, path)
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                while (header := _read_header(f, size)) and (body := _read_body(f, header)):
                    segment.keys.append(body[0])
                    self._keys.setdefault(body[0], first_seq + len(segment.keys) - 1)
                    segment.size = f.tell()
            if segment.size < size:
                dropped = size - segment.size
                self.torn.append((path.name, segment.size, dropped))
                if number == len(found) - 1:
                    log.warning("%s: dropping a torn or corrupt record at offset %d (%d bytes)",
                                path, segment.size, dropped)
                    with open(path, "r+b") as f:
                        f.truncate(segment.size)
                        if self.fsync:
                            os.fsync(f.fileno())
                else:
                    log.warning("%s: corrupt at offset %d; ignoring its last %d bytes",
                                path, segment.size, dropped)
            segments.append(segment)
        return segments

    def _create(self, first_seq: int) -> _Segment:
        path = self.folder / f"{first_seq:016d}.seg"
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        if self.fsync:
            _fsync_folder(self.folder)
        return _Segment(first_seq, path)

    @property
    def next_seq(self) -> int:
        with self._cond:
            return self._next_seq

    @property
    def first_seq(self) -> int:
        """The oldest retained record's seq (only the flushing thread changes the segment list)."""
        return self._segments[0].first_seq

    def append(self, records: Sequence[tuple[bytes, bytes]]) -> list[tuple[int, bool]]:
        """Store (key, payload) records; for each, (seq, stored). A key already in the log (or
        earlier in `records`) is not stored again: it gets the seq of the copy there. Returns once
        every returned seq is durable."""
        frames = []
        for key, payload in records:
            if not isinstance(key, bytes) or not isinstance(payload, bytes):
                raise TypeError("records must be (key, payload) pairs of bytes")
            if not 1 <= len(key) <= MAX_KEY:
                raise LogError(f"key of {len(key)} bytes: keys must have 1-{MAX_KEY} bytes")
            if len(payload) > MAX_PAYLOAD:
                raise LogError(f"payload of {len(payload)} bytes exceeds the framing's {MAX_PAYLOAD}")
            frames.append((key, _frame(key, payload)))
        results = []
        with self._cond:
            self._check_open()
            for key, frame in frames:
                seq = self._keys.get(key)
                stored = seq is None
                if stored:
                    seq = self._keys[key] = self._next_seq
                    self._next_seq += 1
                    self._queue.append((seq, key, frame))
                results.append((seq, stored))
            if results:
                self._commit(max(seq for seq, _ in results) + 1)
        return results

    def _check_open(self) -> None:
        if self._closed:
            raise LogError(f"the log in {self.folder} is closed")
        if self._failure is not None:
            raise LogError(f"the log in {self.folder} failed: {self._failure!r}; reopen it")

    def _commit(self, target: int) -> None:
        """With `_cond` held: return once every seq below `target` is durable, leading a flush of
        the whole queue whenever none is under way."""
        while self._durable < target:
            if self._failure is not None:
                raise LogError(f"the log in {self.folder} failed: {self._failure!r}") from self._failure
            if self._flushing:
                self._cond.wait()
                continue
            batch, self._queue = self._queue, []
            self._flushing = True
            self._cond.release()
            try:
                rotated = self._write(batch)
            except BaseException as error:
                self._failure = error
                raise LogError(f"writing to {self.folder} failed: {error!r}") from error
            finally:
                self._cond.acquire()
                self._flushing = False
                self._cond.notify_all()
            self._durable = batch[-1][0] + 1
            self.records_written += len(batch)
            if rotated:
                self._expire()

    def _write(self, batch: list[tuple[int, bytes, bytes]]) -> bool:
        """Write a batch (seqs contiguous) and sync it; a full segment is synced and closed
        before the next is created, so only the newest can ever end torn. Returns whether it rotated."""
        active = self._segments[-1]
        pending: list[bytes] = []
        rotated = False
        for seq, key, frame in batch:
            if active.size >= self.segment_bytes:
                self._write_all(pending)
                pending = []
                os.close(self._fd)
                active = self._create(seq)
                self._segments.append(active)
                self._fd = os.open(active.path, os.O_WRONLY | os.O_APPEND)
                rotated = True
            pending.append(frame)
            active.size += len(frame)
            active.keys.append(key)
        self._write_all(pending)
        return rotated

    def _write_all(self, frames: list[bytes]) -> None:
        if not frames:  # a rotation before the batch's first record: the old file is synced already
            return
        view = memoryview(b"".join(frames))
        while view:
            view = view[os.write(self._fd, view):]
        if self.fsync:
            os.fsync(self._fd)
            self.fsyncs += 1

    def _expire(self) -> None:
        """With `_cond` held: delete the oldest segments while the log exceeds its retention."""
        total = sum(segment.size for segment in self._segments)
        while total > self.retention_bytes and len(self._segments) > 1:
            oldest = self._segments.pop(0)
            os.unlink(oldest.path)
            total -= oldest.size
            for ordinal, key in enumerate(oldest.keys):
                if self._keys.get(key) == oldest.first_seq + ordinal:
                    del self._keys[key]

    def close(self) -> None:
        """Flush what other threads queued, then release the file and the lock."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            try:
                if self._failure is None:
                    self._commit(self._next_seq)
            finally:
                os.close(self._fd)
                os.close(self._lock_fd)

    def __enter__(self) -> SegmentLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class ReadResult:
    records: list[tuple[int, bytes, bytes]]  # (seq, key, payload)
    next_seq: int  # where the next read continues
    skipped: int  # records asked for that are gone: deleted by retention (or lost to corruption)


class SegmentReader:
    """A read-only tail of a log folder, in any process, beside the writer; takes no lock.

    A record not complete and intact at the end of the newest segment is not yet written as far as
    a reader knows: it stops before it and sees it on a later call."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        # Where the last read stopped: (segment's first seq, seq, byte offset), so that tailing
        # seeks straight there instead of rescanning the segment from its start.
        self._position: tuple[int, int, int] | None = None

    def read(self, from_seq: int, max_records: int = 1024, max_bytes: int = 64 << 20) -> ReadResult:
        """Up to `max_records` records from `from_seq` on, and at least one if any is there even
        when it alone exceeds `max_bytes` (keys and payloads)."""
        if from_seq < 0 or max_records < 1:
            raise ValueError("from_seq must be >= 0 and max_records >= 1")
        while True:
            try:
                return self._read(_segments(self.folder), from_seq, max_records, max_bytes)
            except FileNotFoundError:  # retention deleted a segment between listing and opening
                continue

    def _read(self, segments: list[tuple[int, Path]], from_seq: int, max_records: int,
              max_bytes: int) -> ReadResult:
        records: list[tuple[int, bytes, bytes]] = []
        if not segments:
            return ReadResult(records, from_seq, 0)
        seq = max(from_seq, segments[0][0])
        skipped = seq - from_seq
        start = bisect.bisect_right([first_seq for first_seq, _ in segments], seq) - 1
        for first_seq, path in segments[start:]:
            if seq < first_seq:  # the segment before ended early: records lost to corruption
                skipped += first_seq - seq
                seq = first_seq
            seq, max_bytes, full = self._read_segment(path, first_seq, seq, records, max_records, max_bytes)
            if full:
                break
        return ReadResult(records, seq, skipped)

    def _read_segment(self, path: Path, first_seq: int, seq: int, records: list[tuple[int, bytes, bytes]],
                      max_records: int, budget: int) -> tuple[int, int, bool]:
        """Add the records of one segment from `seq` on to `records`; returns the next seq, the
        byte budget left, and whether a limit stopped it (rather than the segment's end)."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            ordinal = 0
            if self._position is not None and self._position[:2] == (first_seq, seq):
                f.seek(self._position[2])
                ordinal = seq - first_seq
            while True:
                wanted = first_seq + ordinal == seq
                if wanted:
                    self._position = (first_seq, seq, f.tell())
                    if len(records) >= max_records:
                        return seq, budget, True
                header = _read_header(f, size)
                if header is None:
                    return seq, budget, False
                if wanted and records and header[0] + header[1] > budget:
                    return seq, budget, True
                body = _read_body(f, header)
                if body is None:
                    return seq, budget, False
                if wanted:
                    records.append((seq, *body))
                    budget -= header[0] + header[1]
                    seq += 1
                ordinal += 1
