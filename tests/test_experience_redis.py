"""The experience log on Redis Streams, against a real redis-server: several writers share one stream
with gap-free numbers, a retried record is stored once, a reader tails by number and is told what
trimming took, and the trainer's feed reads it as it reads segment files."""

from __future__ import annotations

import threading

import pytest

from reverie.cli import main
from reverie.experience import LogError, SegmentLog, StreamLog, StreamReader, encode, open_reader
from serving import fragment
from builders import CARTPOLE, drain
from reverie.trainer.feed import ClientFeed


def test_writers_share_one_stream_with_gap_free_numbers_and_store_a_retry_once(redis_server):
    url = redis_server.stream("shared")
    with StreamLog(url) as a, StreamLog(url) as b:
        acks: list[list[tuple[int, bool]]] = [[], []]

        def write(log: StreamLog, into: list, name: str) -> None:
            for i in range(100):
                into += log.append([(f"{name}-{i}".encode(), bytes([i]) * (i + 1))])

        threads = [threading.Thread(target=write, args=(log, into, name)) for log, into, name in ((a, acks[0], "a"), (b, acks[1], "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(seq for ack in acks for seq, _ in ack) == list(range(200))
        assert all(stored for ack in acks for _, stored in ack)
        again = b.append([(b"a-7", b"different bytes"), (b"new", b"x")])  # a retry through the other writer
        assert again == [(acks[0][7][0], False), (200, True)]
    records = StreamReader(url).read(0, max_records=1000).records
    assert [seq for seq, _, _ in records] == list(range(201))
    by_key = {key: (seq, payload) for seq, key, payload in records}
    assert by_key[b"a-7"] == (acks[0][7][0], bytes([7]) * 8)  # the first copy, not the retry


def test_a_reader_pages_by_count_and_bytes_and_is_told_what_trimming_took(redis_server):
    url = redis_server.stream("trimmed")
    with StreamLog(url, max_records=100) as log:
        for i in range(30):
            log.append([(f"k{i}-{j}".encode(), b"p" * 10) for j in range(10)])  # 300 records
    reader = StreamReader(url)
    page = reader.read(290, max_records=4)
    assert [seq for seq, _, _ in page.records] == [290, 291, 292, 293] and page.next_seq == 294
    assert len(reader.read(290, max_bytes=35).records) == 2  # 15 bytes each (key + payload)
    whole = reader.read(0, max_records=1000)
    first = whole.records[0][0]
    assert 0 < first <= 200 and whole.skipped == first  # Redis trims whole nodes: ~100 kept, at least
    assert [seq for seq, _, _ in whole.records] == list(range(first, 300)) and whole.next_seq == 300
    assert reader.read(300) == type(whole)([], 300, 0)  # nothing new, nothing missed


def test_the_feed_reads_a_stream_as_it_reads_segment_files(redis_server, tmp_path):
    fragments = [fragment(e, i, 3, 3 * i, "terminated" if i == 2 else "") for i in range(3) for e in range(4)]
    url = redis_server.stream("feed")
    with StreamLog(url) as stream, SegmentLog(tmp_path) as segments:
        for f in fragments:
            stream.append([(f.key, encode(f))])
            segments.append([(f.key, encode(f))])
    from_stream = drain(ClientFeed(url, CARTPOLE, 64, None))
    from_files = drain(ClientFeed(str(tmp_path), CARTPOLE, 64, None))
    assert len(from_stream) == 36 and [(s.obs.tolist(), s.terminated) for s in from_stream] == [
        (s.obs.tolist(), s.terminated) for s in from_files]
    assert isinstance(open_reader(url), StreamReader)


def test_an_unreachable_redis_is_a_clear_error(capsys):
    with pytest.raises(LogError, match="cannot reach Redis"):
        StreamLog("redis://127.0.0.1:1/0")
    assert main(["serve", "--models", ".", "--experience", "redis://127.0.0.1:1/0", "--port", "0"]) == 2
    assert "cannot reach Redis" in capsys.readouterr().err

