"""The experience log: record format, durable appends, dedup, rotation, retention, torn tails,
tailing readers, group commit and a real SIGKILL mid-append. Real files in `tmp_path`, no mocks."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from reverie.experience import Fragment, LogError, SegmentLog, SegmentReader, decode, encode

ROOT = Path(__file__).resolve().parents[1]
FRAME_HEADER = 12  # magic, payload length, key length, CRC32


def _vector_fragment() -> Fragment:
    return Fragment(
        episode="ep-1.a:b_c", index=3,
        observations=np.arange(12, dtype=np.float32).reshape(4, 3) / 7,
        actions=np.array([0, 1, 1], dtype=np.int64),
        rewards=np.array([1.0, -0.5, 2.25], dtype=np.float32),
        model_versions=np.array([-1, 4, 5], dtype=np.int64),
        terminated=True, truncated=False, source="session")


def _image_fragment() -> Fragment:
    rng = np.random.default_rng(0)
    return Fragment(
        episode="pixels", index=0,
        observations=rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8),
        actions=rng.standard_normal((2, 2)).astype(np.float32),
        rewards=np.array([0.0, 1.5], dtype=np.float32),
        model_versions=np.array([7, 7], dtype=np.int64),
        terminated=False, truncated=True, source="upload")


@pytest.mark.parametrize("make", [_vector_fragment, _image_fragment])
def test_fragment_roundtrips(make):
    fragment = make()
    back = decode(encode(fragment))
    for name in ("episode", "index", "terminated", "truncated", "source", "steps", "key"):
        assert getattr(back, name) == getattr(fragment, name), name
    for name in ("observations", "actions", "rewards", "model_versions"):
        original, decoded = getattr(fragment, name), getattr(back, name)
        assert decoded.dtype == original.dtype and decoded.shape == original.shape, name
        np.testing.assert_array_equal(decoded, original)
    assert back.key == f"{fragment.episode}\x00{fragment.index}".encode()


def _with_header(payload: bytes, edit) -> bytes:
    """`payload` with its JSON header passed through `edit` and the array bytes kept."""
    (length,) = struct.unpack_from("<I", payload)
    header = json.loads(payload[4:4 + length])
    edit(header)
    head = json.dumps(header).encode()
    return struct.pack("<I", len(head)) + head + payload[4 + length:]


def _set_shape(name: str, shape: list[int]):
    def edit(header: dict) -> None:
        next(spec for spec in header["arrays"] if spec[0] == name)[2] = shape
    return edit


def _set_dtype(name: str, dtype: str):
    def edit(header: dict) -> None:
        next(spec for spec in header["arrays"] if spec[0] == name)[1] = dtype
    return edit


GOOD = encode(_vector_fragment())  # 3 steps, observations [4, 3]


@pytest.mark.parametrize("payload", [
    GOOD[:2],  # no room for the header length
    GOOD[:30],  # header cut
    GOOD[:-1],  # last array one byte short
    GOOD + b"\x00",  # trailing byte
    b"\x05\x00\x00\x00{nope",  # header not JSON
    _with_header(GOOD, _set_dtype("rewards", "float64")),  # dtype not allowed
    _with_header(GOOD, _set_dtype("actions", "object")),  # not a dtype the format knows
    _with_header(GOOD, _set_dtype("observations", "int64")),  # allowed dtype, wrong for the field
    # Row counts that disagree while the byte total still adds up (12 + 3 * 4 = 4 * 6).
    _with_header(GOOD, lambda h: (_set_shape("observations", [6, 3])(h), _set_shape("rewards", [0])(h))),
    _with_header(GOOD, _set_shape("observations", [3, 4])),  # 3 rows for 3 steps: needs 4
    _with_header(GOOD, lambda h: h.update(episode="bad episode")),
    _with_header(GOOD, lambda h: h.update(index=-1)),
    _with_header(GOOD, lambda h: h.pop("source")),
])
def test_decode_rejects_malformed_payloads(payload):
    with pytest.raises(ValueError):
        decode(payload)


def test_fragment_checks_its_own_consistency():
    fragment = _vector_fragment()
    with pytest.raises(ValueError, match="observations"):
        Fragment(fragment.episode, 0, fragment.observations[:3], fragment.actions, fragment.rewards,
                 fragment.model_versions, False, False)
    with pytest.raises(ValueError, match="actions"):
        Fragment(fragment.episode, 0, fragment.observations, fragment.actions[:2], fragment.rewards,
                 fragment.model_versions, False, False)


def _records(count: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    return [(b"key-%d" % i, b"payload %d " % i * (1 + i % 5)) for i in range(start, start + count)]


def _read_all(folder: Path, from_seq: int = 0, max_records: int = 7):
    """Everything from `from_seq` on, paged in small reads so pages cross segment boundaries."""
    reader, records, seq = SegmentReader(folder), [], from_seq
    while True:
        result = reader.read(seq, max_records=max_records)
        records += result.records
        if not result.records:
            return records
        seq = result.next_seq


def test_append_reads_back_across_segments_and_reopens(tmp_path):
    records = _records(40)
    with SegmentLog(tmp_path, segment_bytes=256) as log:
        assert log.append(records[:15]) == [(seq, True) for seq in range(15)]
        assert [log.append([record])[0] for record in records[15:]] == [(seq, True) for seq in range(15, 40)]
        assert log.next_seq == 40
    assert len(list(tmp_path.glob("*.seg"))) > 3
    assert _read_all(tmp_path) == [(seq, key, payload) for seq, (key, payload) in enumerate(records)]

    with SegmentLog(tmp_path, segment_bytes=256) as log:
        assert log.next_seq == 40 and log.first_seq == 0 and log.torn == []
        # A retried upload after the restart is known: the seq of the copy there, nothing written.
        assert log.append([records[5], records[39]]) == [(5, False), (39, False)]
        assert log.append([(b"new", b"a"), (b"new", b"b"), (b"newer", b"c")]) == [(40, True), (40, False), (41, True)]
        assert log.records_written == 2
    assert _read_all(tmp_path, 38) == [(38, *records[38]), (39, *records[39]), (40, b"new", b"a"), (41, b"newer", b"c")]


def test_bad_records_are_refused(tmp_path):
    with SegmentLog(tmp_path) as log:
        with pytest.raises(LogError, match="key"):
            log.append([(b"k" * 1025, b"x")])
        assert log.next_seq == 0


def test_retention_deletes_oldest_segments_and_readers_skip_them(tmp_path):
    records = _records(60)
    with SegmentLog(tmp_path, segment_bytes=300, retention_bytes=900) as log:
        for record in records:
            log.append([record])
        first = log.first_seq
        assert first > 0
        segments = sorted(tmp_path.glob("*.seg"))
        assert int(segments[0].stem) == first
        assert sum(path.stat().st_size for path in segments[1:]) <= 900
        # Deleted keys left the dedup set; retained ones did not.
        assert log.append([records[0], records[-1]]) == [(60, True), (59, False)]

    result = SegmentReader(tmp_path).read(0, max_records=1)
    assert result.skipped == first
    assert result.records == [(first, *records[first])]
    assert result.next_seq == first + 1
    assert SegmentReader(tmp_path).read(first).skipped == 0


def _last_frame(folder: Path) -> tuple[Path, int, int]:
    """(newest segment, offset of its last frame, that frame's length)."""
    path = sorted(folder.glob("*.seg"))[-1]
    data, offset = path.read_bytes(), 0
    while True:
        _, payload_length, key_length, _ = struct.unpack_from("<2sIHI", data, offset)
        length = FRAME_HEADER + key_length + payload_length
        if offset + length == len(data):
            return path, offset, length
        offset += length


@pytest.mark.parametrize("damage", ["cut", "flip"])
def test_torn_tail_is_truncated_and_earlier_records_kept(tmp_path, caplog, damage):
    records = _records(12)
    with SegmentLog(tmp_path, segment_bytes=200) as log:
        log.append(records)
    path, offset, length = _last_frame(tmp_path)
    with open(path, "r+b") as f:
        if damage == "cut":
            f.truncate(offset + length // 2)
            dropped = length // 2
        else:
            f.seek(offset + length - 3)
            byte = f.read(1)
            f.seek(offset + length - 3)
            f.write(bytes([byte[0] ^ 0x01]))
            dropped = length

    with caplog.at_level(logging.WARNING, logger="reverie.experience"), SegmentLog(tmp_path, segment_bytes=200) as log:
        assert log.torn == [(path.name, offset, dropped)]
        assert path.stat().st_size == offset
        assert log.next_seq == 11
        assert log.append([(b"after", b"crash")]) == [(11, True)]
    assert path.name in caplog.text and str(offset) in caplog.text
    expected = [(seq, key, payload) for seq, (key, payload) in enumerate(records[:11])] + [(11, b"after", b"crash")]
    assert _read_all(tmp_path) == expected


def test_corruption_in_an_older_segment_is_reported_not_truncated(tmp_path):
    records = _records(30)
    with SegmentLog(tmp_path, segment_bytes=200) as log:
        log.append(records)
    oldest = sorted(tmp_path.glob("*.seg"))[0]
    size = oldest.stat().st_size
    with open(oldest, "r+b") as f:  # the second record's magic
        _, payload_length, key_length, _ = struct.unpack("<2sIHI", f.read(FRAME_HEADER))
        f.seek(FRAME_HEADER + key_length + payload_length)
        f.write(b"XX")
    with SegmentLog(tmp_path, segment_bytes=200) as log:
        assert log.torn == [(oldest.name, FRAME_HEADER + key_length + payload_length,
                             size - FRAME_HEADER - key_length - payload_length)]
        assert oldest.stat().st_size == size and log.next_seq == 30
        assert log.append([records[0], records[1]]) == [(0, False), (30, True)]  # record 1 is lost
    read = _read_all(tmp_path)
    assert [seq for seq, _, _ in read][:2] == [0, int(sorted(tmp_path.glob("*.seg"))[1].stem)]
    assert SegmentReader(tmp_path).read(1).skipped > 0


def test_reader_waits_for_incomplete_tail_and_follows_the_writer(tmp_path):
    records = _records(8)
    reader = SegmentReader(tmp_path)
    with SegmentLog(tmp_path, segment_bytes=150) as log:
        log.append(records[:3])
        first = reader.read(0)
        assert first.records == [(seq, *records[seq]) for seq in range(3)] and first.next_seq == 3
        assert reader.read(3).records == []
        log.append(records[3:6])
        log.append(records[6:])
        later = reader.read(first.next_seq)
        assert later.records == [(seq, *records[seq]) for seq in range(3, 8)] and later.next_seq == 8

    key, payload = b"by-hand", b"half written" * 10
    frame = (b"RV" + struct.pack("<IH", len(payload), len(key))
             + struct.pack("<I", zlib.crc32(struct.pack("<IH", len(payload), len(key)) + key + payload))
             + key + payload)
    newest = sorted(tmp_path.glob("*.seg"))[-1]
    with open(newest, "ab") as f:
        f.write(frame[:30])
        f.flush()
        assert reader.read(8).records == [] and reader.read(8).next_seq == 8
        assert [seq for seq, _, _ in SegmentReader(tmp_path).read(0).records] == list(range(8))
        f.write(frame[30:-1] + b"?")  # complete length, wrong CRC: still not written
        f.flush()
        assert reader.read(8).records == []
    with open(newest, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(frame[-1:])
    assert reader.read(8).records == [(8, key, payload)]
    assert SegmentReader(tmp_path).read(8).records == [(8, key, payload)]


def test_group_commit_shares_fsyncs(tmp_path):
    threads, per_thread = 8, 50
    barrier = threading.Barrier(threads)
    seqs: list[int] = []
    with SegmentLog(tmp_path, fsync=True) as log:
        def work(worker: int) -> None:
            barrier.wait()
            for i in range(per_thread):
                [(seq, stored)] = log.append([(b"%d/%d" % (worker, i), b"x" * 100)])
                assert stored
                seqs.append(seq)

        pool = [threading.Thread(target=work, args=(worker,)) for worker in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        assert sorted(seqs) == list(range(threads * per_thread))
        assert log.records_written == threads * per_thread
        assert 0 < log.fsyncs < threads * per_thread
    assert len(_read_all(tmp_path, max_records=1000)) == threads * per_thread


def test_one_writer_per_folder(tmp_path):
    with SegmentLog(tmp_path):
        with pytest.raises(LogError, match="already open for writing by another process"):
            SegmentLog(tmp_path)
    with SegmentLog(tmp_path) as log:  # the lock goes with the writer
        assert log.next_seq == 0


WRITER = """
import os, sys, zlib
from reverie.experience import SegmentLog
log = SegmentLog(sys.argv[1], segment_bytes=4096)
i = 0
while True:
    payload = os.urandom(1 + i * 37 % 500)
    [(seq, stored)] = log.append([(b"k%d" % i, payload)])
    print(seq, zlib.crc32(payload), flush=True)
    i += 1
"""


def test_acknowledged_records_survive_sigkill(tmp_path):
    folder = tmp_path / "log"
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    output = b""
    try:
        deadline = time.monotonic() + 30
        while output.count(b"\n") < 200 and process.poll() is None and time.monotonic() < deadline:
            if select.select([process.stdout], [], [], 0.5)[0]:
                output += os.read(process.stdout.fileno(), 1 << 16)
        assert process.poll() is None, process.stderr.read().decode()
        os.kill(process.pid, signal.SIGKILL)
        rest, _ = process.communicate(timeout=10)
        output += rest
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    acknowledged = dict(map(int, line.split()) for line in output.split(b"\n")[:-1])
    assert len(acknowledged) >= 200 and sorted(acknowledged) == list(range(len(acknowledged)))

    with SegmentLog(folder, segment_bytes=4096) as log:
        assert log.next_seq >= len(acknowledged)
    stored = {seq: zlib.crc32(payload) for seq, _, payload in _read_all(folder, max_records=1000)}
    assert {seq: stored.get(seq) for seq in acknowledged} == acknowledged
