"""The fault-injection proxy (zarrtok.testing.fault_proxy) between s3fs/boto3 and the loopback moto
server: clean pass-through, and each fault as the client observes it. Only s3fs, boto3 and raw
sockets here, no zarrtok internals."""

from __future__ import annotations

import http.client
import socket
import threading
import time
import uuid

import pytest
from botocore.exceptions import HTTPClientError

from zarrtok.testing.fault_proxy import (
    FaultProxy,
    Rule,
    blackhole,
    delay,
    drop,
    flip_bits,
    status,
    truncate,
)

s3fs = pytest.importorskip("s3fs")

pytestmark = pytest.mark.timeout(60)

DATA = bytes((i * 7 + i // 256) % 256 for i in range(300_000))  # not periodic in 256
# botocore: retries.max_attempts counts retries (1 = two attempts); total_max_attempts counts attempts.
FAST_FAIL = {"read_timeout": 1, "connect_timeout": 1, "retries": {"total_max_attempts": 1}}


@pytest.fixture
def bucket(s3) -> str:
    name = s3.make_bucket(f"fp-{uuid.uuid4().hex[:16]}")
    s3.client().put_object(Bucket=name, Key="obj", Body=DATA)
    s3.client().put_object(Bucket=name, Key="small", Body=b"0123456789")
    return name


@pytest.fixture
def proxy(s3):
    with FaultProxy(s3, seed=1234) as p:
        yield p


def filesystem(proxy: FaultProxy, s3fs_retries: int | None = None, **config_kwargs) -> s3fs.S3FileSystem:
    options = proxy.storage_options
    if config_kwargs:
        options["config_kwargs"] = config_kwargs
    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **options)
    if s3fs_retries is not None:
        fs.retries = s3fs_retries  # s3fs's own retry loop around reads (a class attribute, not a kwarg)
    return fs


_clients: dict = {}


def presigned(proxy: FaultProxy, bucket: str, key: str | None = None) -> str:
    """A presigned GET (object, or a listing when ``key`` is None) through the proxy: path and query."""
    client = _clients.get(proxy.port)
    if client is None:
        client = _clients[proxy.port] = proxy.client()
    if key is None:
        url = client.generate_presigned_url("list_objects_v2", Params={"Bucket": bucket})
    else:
        url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key})
    return url[len(proxy.url):]


def raw_get(proxy: FaultProxy, bucket: str, key: str | None = "small", timeout: float = 10,
            headers: dict | None = None, conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    """One plain http.client GET through the proxy (presigned, so the server answers it)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=timeout)
    try:
        conn.request("GET", presigned(proxy, bucket, key), headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        if own:
            conn.close()


# -- pass-through ------------------------------------------------------------------------------------
def test_pass_through_whole_and_ranged(proxy, bucket, s3):
    fs = filesystem(proxy)
    s3.reset_log()
    assert fs.cat_file(f"{bucket}/obj") == DATA
    assert fs.cat_file(f"{bucket}/obj", start=1000, end=70_001) == DATA[1000:70_001]
    assert fs.cat_file(f"{bucket}/obj", start=len(DATA) - 5) == DATA[-5:]
    assert fs.size(f"{bucket}/obj") == len(DATA)
    assert sorted(fs.ls(bucket)) == [f"{bucket}/obj", f"{bucket}/small"]
    with fs.open(f"{bucket}/obj", "rb", block_size=50_000) as f:
        f.seek(123_456)
        assert f.read(10_000) == DATA[123_456:133_456]
    # Every request went through the proxy untouched, and reached the server.
    events = proxy.events
    assert events and all(e.fault is None and e.forwarded for e in events), proxy.summary()
    assert proxy.counts() == {"pass": len(events)}
    assert len(s3.requests) == len(events)
    ranged = [e for e in events if e.range == "bytes=1000-70000"]
    assert len(ranged) == 1 and ranged[0].status == 206 and ranged[0].bytes_sent == 69_001


def test_pass_through_writes_and_concurrency(proxy, bucket, s3):
    fs = filesystem(proxy)
    fs.pipe(f"{bucket}/written", b"through the proxy")
    assert s3.client().get_object(Bucket=bucket, Key="written")["Body"].read() == b"through the proxy"
    # A >1 MB PutObject with boto3 (Expect: 100-continue) through the proxy.
    big = DATA * 4
    proxy.client().put_object(Bucket=bucket, Key="big", Body=big)
    assert s3.client().get_object(Bucket=bucket, Key="big")["Body"].read() == big
    # Many concurrent ranged reads over s3fs's pooled keep-alive connections.
    ranges = [(i * 9_973, i * 9_973 + 4_321) for i in range(30)]
    got = fs.cat_ranges([f"{bucket}/obj"] * len(ranges), [a for a, _ in ranges], [b for _, b in ranges])
    assert got == [DATA[a:b] for a, b in ranges]
    # Keep-alive: the proxy served several requests per client connection.
    events = proxy.events
    assert len(events) >= 32 and all(e.fault is None for e in events)
    assert len({e.connection for e in events}) == proxy.connections_accepted < len(events)


# -- status ------------------------------------------------------------------------------------------
def test_status_first_request_only_is_retried(proxy, bucket):
    rule = proxy.add(status(503, times=1, method="GET", has_range=True))
    fs = filesystem(proxy)
    assert fs.cat_file(f"{bucket}/obj", start=10, end=20) == DATA[10:20]
    assert rule.applied == 1
    events = [e for e in proxy.events if e.method == "GET"]
    assert [(e.fault, e.status) for e in events] == [("status", 503), (None, 206)], proxy.summary()
    assert not events[0].forwarded


def test_status_always_500_is_an_error(proxy, bucket):
    proxy.add(status(500, path=r"/obj$"))
    fs = filesystem(proxy, s3fs_retries=1, retries={"total_max_attempts": 3})
    with pytest.raises(OSError):
        fs.cat_file(f"{bucket}/obj", start=0, end=10)
    assert proxy.count("status") == 3  # botocore's 3 attempts, each answered 500 by the proxy
    # Other paths are untouched.
    assert fs.cat_file(f"{bucket}/small") == b"0123456789"


def test_status_custom_body_and_forward(proxy, bucket, s3):
    proxy.add(status(500, body=b"nope", forward=True, times=1))
    code, body = raw_get(proxy, bucket)
    assert (code, body) == (500, b"nope")
    [event] = proxy.events
    assert event.forwarded and event.upstream_status is not None  # the server did see it


# -- drop --------------------------------------------------------------------------------------------
def test_drop_first_request_is_retried(proxy, bucket):
    proxy.add(drop(times=1, method="GET"))
    fs = filesystem(proxy)
    assert fs.cat_file(f"{bucket}/obj", start=0, end=100) == DATA[:100]
    assert proxy.count("drop") == 1 and proxy.count("pass") >= 1


def test_drop_always_is_an_error(proxy, bucket):
    proxy.add(drop(path=r"/obj$"))
    fs = filesystem(proxy, s3fs_retries=1, retries={"total_max_attempts": 2})
    with pytest.raises((HTTPClientError, OSError)):  # botocore's ConnectionClosedError
        fs.cat_file(f"{bucket}/obj", start=0, end=100)
    # 2 botocore attempts; aiohttp (3.10+) itself retries an idempotent request once on a disconnect.
    assert proxy.count("drop") in (2, 4), proxy.summary()
    assert all(e.status is None and e.bytes_sent == 0 for e in proxy.events if e.fault == "drop")


# -- delay -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("before", [False, True])
def test_delay_is_measured(proxy, bucket, before):
    fs = filesystem(proxy)
    assert fs.cat_file(f"{bucket}/small") == b"0123456789"  # warm the connection pool
    proxy.add(delay(0.6, before=before, method="GET", times=1))
    t0 = time.monotonic()
    assert fs.cat_file(f"{bucket}/obj", start=0, end=1000) == DATA[:1000]
    elapsed = time.monotonic() - t0
    assert 0.6 <= elapsed < 5, elapsed
    [event] = [e for e in proxy.events if e.fault == "delay"]
    assert event.finished - event.started >= 0.6


# -- blackhole ---------------------------------------------------------------------------------------
def test_blackhole_client_times_out(proxy, bucket):
    proxy.add(blackhole(method="GET", path=r"/obj$"))
    fs = filesystem(proxy, s3fs_retries=1, **FAST_FAIL)
    t0 = time.monotonic()
    with pytest.raises(Exception) as info:
        fs.cat_file(f"{bucket}/obj", start=0, end=100)
    elapsed = time.monotonic() - t0
    assert 0.9 <= elapsed < 10, (elapsed, info.value)
    assert "timeout" in repr(info.value).lower() or "timed out" in str(info.value).lower(), repr(info.value)
    assert proxy.count("blackhole") == 1
    proxy.clear()
    assert fs.cat_file(f"{bucket}/obj", start=0, end=100) == DATA[:100]


def test_stop_returns_promptly_with_a_blackholed_connection(s3, bucket):
    proxy = FaultProxy(s3).start()
    proxy.add(blackhole())
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    try:
        sock.sendall(f"GET /{bucket}/small HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        deadline = time.monotonic() + 5
        while proxy.count("blackhole") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.count("blackhole") == 1
        # A blocked boto3 client in a thread too (long timeout: the proxy's stop must not wait for it).
        client = proxy.client(read_timeout=60, retries={"total_max_attempts": 1})
        outcome: list = []
        thread = threading.Thread(target=lambda: outcome.append(_try(client.get_object, Bucket=bucket, Key="obj")),
                                  daemon=True)
        thread.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        proxy.stop()
        assert time.monotonic() - t0 < 2
        assert sock.recv(100) == b""  # the proxy closed the blackholed connection without answering
        thread.join(10)
        assert outcome and isinstance(outcome[0], Exception)
        assert not proxy.running
    finally:
        sock.close()
        proxy.stop()


def _try(fn, **kwargs):
    try:
        return fn(**kwargs)
    except Exception as exc:  # noqa: BLE001
        return exc


# -- truncate ----------------------------------------------------------------------------------------
def test_truncate_first_request_is_retried(proxy, bucket):
    proxy.add(truncate(100, times=1, method="GET"))
    fs = filesystem(proxy)
    assert fs.cat_file(f"{bucket}/obj", start=0, end=5000) == DATA[:5000]
    events = [e for e in proxy.events if e.method == "GET"]
    assert events[0].fault == "truncate" and events[0].bytes_sent == 100 and events[0].content_length == 5000
    assert events[1].fault is None and events[1].bytes_sent == 5000


def test_truncate_always_is_a_short_read_error(proxy, bucket):
    proxy.add(truncate(-10, path=r"/obj$", method="GET"))
    fs = filesystem(proxy, s3fs_retries=2)
    with pytest.raises(Exception) as info:
        fs.cat_file(f"{bucket}/obj", start=0, end=5000)
    assert "payload" in repr(info.value).lower() or "incomplete" in repr(info.value).lower(), repr(info.value)
    events = [e for e in proxy.events if e.fault == "truncate"]
    assert len(events) == 2 and all(e.bytes_sent == 4990 and e.content_length == 5000 for e in events)


def test_truncate_raw_client_sees_short_body(proxy, bucket):
    proxy.add(truncate(3))
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        conn.request("GET", presigned(proxy, bucket, "small"))
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Length") == "10"
        with pytest.raises(http.client.IncompleteRead) as info:
            resp.read()
        assert len(info.value.partial) == 3
    finally:
        conn.close()


# -- flip_bits ---------------------------------------------------------------------------------------
def test_flip_bits_at_positions(proxy, bucket):
    proxy.add(flip_bits(positions=[0, 9, 8 * 999 + 7, 10**9], has_range=True, times=1))
    fs = filesystem(proxy)
    got = fs.cat_file(f"{bucket}/obj", start=0, end=1000)
    expected = bytearray(DATA[:1000])
    expected[0] ^= 0x01
    expected[1] ^= 0x02
    expected[999] ^= 0x80
    assert len(got) == 1000 and got == bytes(expected)
    [event] = [e for e in proxy.events if e.fault == "flip_bits"]
    assert event.detail["bits"] == [0, 9, 8 * 999 + 7] and event.content_length == 1000
    assert fs.cat_file(f"{bucket}/obj", start=0, end=1000) == DATA[:1000]  # times=1: next one is clean


def test_flip_bits_random_count(proxy, bucket):
    proxy.add(flip_bits(count=5, has_range=True))
    fs = filesystem(proxy)
    got = fs.cat_file(f"{bucket}/obj", start=2000, end=12_000)
    [event] = [e for e in proxy.events if e.fault == "flip_bits"]
    bits = event.detail["bits"]
    assert len(set(bits)) == 5
    diff = [(i * 8 + b) for i, (x, y) in enumerate(zip(got, DATA[2000:12_000])) for b in range(8) if (x ^ y) >> b & 1]
    assert diff == sorted(bits)


def test_flip_bits_whole_object_is_wrong_or_detected(proxy, bucket):
    """A whole-object GET carries the object's checksum; botocore may validate it (FlexibleChecksumError).
    Either the client notices, or it gets wrong bytes: never the right bytes silently."""
    proxy.add(flip_bits(count=1, path=r"/obj$", method="GET", has_range=False))
    try:
        got = filesystem(proxy, s3fs_retries=1).cat_file(f"{bucket}/obj")
    except Exception as exc:  # noqa: BLE001 - detected by the client (FlexibleChecksumError with botocore 1.36+)
        assert "checksum" in repr(exc).lower(), repr(exc)
    else:
        assert got != DATA and len(got) == len(DATA)
    assert proxy.count("flip_bits") >= 1


# -- rules: counts, after, probability, changes while running ------------------------------------------
def test_rules_after_times_and_live_changes(proxy, bucket):
    rule = proxy.add(status(503, after=2, times=2, path=r"/small$"))
    codes = [raw_get(proxy, bucket)[0] for _ in range(6)]
    assert codes[:2] == [200, 200] and codes[2:4] == [503, 503] and codes[4:] == [200, 200]
    assert (rule.seen, rule.applied) == (4, 2)  # seen stops counting once exhausted
    proxy.clear()
    proxy.reset_log()
    proxy.add(drop(path=r"/small$"))
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        raw_get(proxy, bucket)
    proxy.clear()
    assert raw_get(proxy, bucket) == (200, b"0123456789")
    assert proxy.counts() == {"drop": 1, "pass": 1}


def test_probability_is_seeded(s3, bucket):
    def pattern(seed):
        with FaultProxy(s3, seed=seed) as p:
            p.add(status(500, probability=0.5))
            return [raw_get(p, bucket)[0] for _ in range(40)]

    a, b, c = pattern(7), pattern(7), pattern(8)
    assert a == b and a != c
    assert 5 < a.count(500) < 35


def test_first_matching_rule_wins_and_filters(proxy, bucket):
    proxy.add(status(503, method="PUT"), status(500, has_range=True), status(404, query="list-type"))
    assert raw_get(proxy, bucket)[0] == 200  # GET, no Range, no query: no rule
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        code, body = raw_get(proxy, bucket, headers={"Range": "bytes=0-3"}, conn=conn)
        assert code == 500 and b"InternalError" in body
        # The same keep-alive connection after an injected error.
        assert raw_get(proxy, bucket, conn=conn) == (200, b"0123456789")
    finally:
        conn.close()
    assert raw_get(proxy, bucket, None)[0] == 404
    with pytest.raises(ValueError):
        Rule("explode")


def test_loopback_only(s3):
    with pytest.raises(ValueError):
        FaultProxy(("10.0.0.1", 80))
    with pytest.raises(ValueError):
        FaultProxy("http://example.com:80")
    assert FaultProxy(s3.endpoint_url).upstream_port == s3.port
