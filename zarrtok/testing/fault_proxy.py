"""A fault-injection HTTP proxy on loopback, between an S3 client (s3fs, boto3) and :class:`S3Server`.

``FaultProxy`` listens on ``127.0.0.1:<ephemeral port>`` and forwards HTTP/1.1 requests, one at a
time per client connection (keep-alive connections are kept, as s3fs/aiohttp reuse them), to an
upstream ``host:port`` on 127.0.0.1 — normally the moto server of :mod:`.s3server`. Each request is
read whole (request line, headers, body by ``Content-Length`` or chunked), checked against the
rules, forwarded with :mod:`http.client`, and its whole response read before the (possibly altered)
response is written back. The faults:

* :func:`status` — answer 500/503/... with an S3-style XML error instead of forwarding
  (``forward=True``: forward first, then lose the real answer);
* :func:`drop` — close the connection without answering (``forward=True``: after the upstream did
  the work);
* :func:`delay` — wait before answering (the request is forwarded first, so the upstream's work is
  not delayed; ``before=True`` delays the forwarding instead);
* :func:`blackhole` — accept the request and never answer, until the client gives up or
  :meth:`FaultProxy.stop` (which returns promptly, it does not wait for the blackholed connection);
* :func:`truncate` — send the headers with the true ``Content-Length`` but only the first
  ``n_bytes`` of the body, then close;
* :func:`flip_bits` — flip bits of the response body (given bit positions, or ``count`` random
  ones from the proxy's seeded RNG); ``Content-Length`` unchanged.

Each rule filters requests (``method``, ``path`` regex, ``query`` regex, ``has_range``), applies to
the matching requests after the first ``after`` of them, at most ``times`` times (``None`` =
always), each with ``probability`` (drawn from the proxy's ``random.Random(seed)``). The first rule
(in the order added) that fires wins: one fault per request. Rules can be added and cleared while
the proxy runs (:meth:`FaultProxy.add`, :meth:`FaultProxy.remove`, :meth:`FaultProxy.clear`).

Every request is logged (:attr:`FaultProxy.events`): what it was, which fault was applied (``None``
for a clean pass-through), the status and body bytes the client actually got, and details (the
flipped bit positions, the kept byte count). :meth:`FaultProxy.counts` tallies them by fault.

Only loopback: the proxy binds 127.0.0.1 and refuses an upstream that is not 127.0.0.1/localhost.

Example::

    with S3Server() as ...:  # or server = S3Server(); ...; server.stop()
        with FaultProxy(server) as proxy:
            proxy.add(status(503, times=1, method="GET", has_range=True))
            fs = s3fs.S3FileSystem(**proxy.storage_options)
            fs.cat_file("bucket/key", start=0, end=10)   # retried by botocore, succeeds
            assert proxy.counts()["status"] == 1
"""

from __future__ import annotations

import collections
import http.client
import random
import re
import select
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .s3server import DUMMY_KEY, DUMMY_SECRET, REGION

__all__ = [
    "FaultProxy",
    "ProxyEvent",
    "Rule",
    "blackhole",
    "delay",
    "drop",
    "flip_bits",
    "status",
    "truncate",
]

_LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
_MAX_HEAD = 256 * 1024
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
_S3_ERROR_CODES = {500: "InternalError", 503: "SlowDown", 502: "BadGateway", 504: "GatewayTimeout",
                   429: "SlowDown", 403: "AccessDenied", 404: "NoSuchKey"}


# -- rules ---------------------------------------------------------------------------------------------
@dataclass
class Rule:
    """One fault and the requests it applies to. Build with :func:`status`, :func:`drop`, ... .

    ``seen`` counts the requests that passed the filters, ``applied`` those the fault was applied to
    (both updated by the proxy, under its lock).
    """

    fault: str  # "status" | "drop" | "delay" | "blackhole" | "truncate" | "flip_bits"
    params: dict[str, Any] = field(default_factory=dict)
    method: str | Iterable[str] | None = None
    path: str | re.Pattern | None = None  # regex, searched in the URL path (no query)
    query: str | re.Pattern | None = None  # regex, searched in the query string
    has_range: bool | None = None  # True: only requests with a Range header; False: only without
    times: int | None = None  # apply at most this many times (None: always)
    after: int = 0  # let the first `after` matching requests through untouched
    probability: float = 1.0
    name: str | None = None  # for logs and assertion messages
    seen: int = 0
    applied: int = 0

    def __post_init__(self) -> None:
        if self.fault not in _FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; one of {sorted(_FAULTS)}")
        if isinstance(self.method, str):
            self._methods = {self.method.upper()}
        elif self.method is None:
            self._methods = None
        else:
            self._methods = {m.upper() for m in self.method}
        self._path = re.compile(self.path) if isinstance(self.path, str) else self.path
        self._query = re.compile(self.query) if isinstance(self.query, str) else self.query
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be in [0, 1]")
        if self.times is not None and self.times < 0:
            raise ValueError("times must be >= 0 or None")

    def matches(self, method: str, path: str, query: str, has_range: bool) -> bool:
        if self._methods is not None and method.upper() not in self._methods:
            return False
        if self._path is not None and not self._path.search(path):
            return False
        if self._query is not None and not self._query.search(query):
            return False
        return self.has_range is None or bool(self.has_range) == has_range

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.applied >= self.times

    def __repr__(self) -> str:
        bits = [self.name or self.fault]
        bits += [f"{k}={v!r}" for k, v in self.params.items()]
        for attr in ("method", "path", "query", "has_range", "times"):
            value = getattr(self, attr)
            if value is not None:
                bits.append(f"{attr}={value!r}")
        if self.after:
            bits.append(f"after={self.after}")
        if self.probability != 1.0:
            bits.append(f"probability={self.probability}")
        bits.append(f"applied={self.applied}/{self.seen}")
        return f"Rule({', '.join(bits)})"


_FAULTS = {"status", "drop", "delay", "blackhole", "truncate", "flip_bits"}


def status(code: int = 500, body: bytes | str | None = None, *, forward: bool = False,
           headers: dict[str, str] | None = None, **filters: Any) -> Rule:
    """Answer ``code`` (default an S3-style XML error: InternalError for 500, SlowDown for 503)
    instead of forwarding; with ``forward=True`` the request reaches the upstream first."""
    if isinstance(body, str):
        body = body.encode()
    return Rule("status", {"code": int(code), "body": body, "forward": forward, "headers": dict(headers or {})},
                **filters)


def drop(*, forward: bool = False, **filters: Any) -> Rule:
    """Close the client connection without answering (``forward=True``: after the upstream answered)."""
    return Rule("drop", {"forward": forward}, **filters)


def delay(seconds: float, *, before: bool = False, **filters: Any) -> Rule:
    """Answer ``seconds`` late (``before=True``: wait before forwarding instead of after)."""
    return Rule("delay", {"seconds": float(seconds), "before": before}, **filters)


def blackhole(**filters: Any) -> Rule:
    """Read the request and never answer (until the client closes the connection or the proxy stops)."""
    return Rule("blackhole", {}, **filters)


def truncate(n_bytes: int = 0, **filters: Any) -> Rule:
    """Send the true headers but only the first ``n_bytes`` of the body (negative: all but the last
    ``-n_bytes``), then close the connection. A body no longer than that is sent less one byte."""
    return Rule("truncate", {"n_bytes": int(n_bytes)}, **filters)


def flip_bits(count: int = 1, positions: Iterable[int] | None = None, **filters: Any) -> Rule:
    """Flip bits of the response body: bit ``p`` is bit ``p % 8`` of byte ``p // 8``. ``positions``
    given: those bits (ones past the end are skipped); else ``count`` distinct random bits."""
    return Rule("flip_bits", {"count": int(count), "positions": None if positions is None else list(positions)},
                **filters)


# -- the log -------------------------------------------------------------------------------------------
@dataclass
class ProxyEvent:
    """One request as the proxy saw it, and what it did to it."""

    method: str
    path: str
    query: str
    range: str | None
    connection: int = 0  # serial number of the client connection (1, 2, ...: keep-alive reuse shows here)
    fault: str | None = None  # None: passed through untouched
    rule: Rule | None = field(default=None, repr=False)
    forwarded: bool = False  # reached the upstream
    upstream_status: int | None = None
    status: int | None = None  # status line sent to the client (None: none sent)
    content_length: int | None = None  # Content-Length sent to the client
    bytes_sent: int = 0  # body bytes actually written to the client
    detail: dict[str, Any] = field(default_factory=dict)  # e.g. {"bits": [...]}, {"kept": n}
    error: str | None = None  # an exception while forwarding or answering
    done: bool = False
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None


# -- the proxy -----------------------------------------------------------------------------------------
class _Closed(Exception):
    """The client closed the connection (or the proxy is stopping)."""


class FaultProxy:
    """An HTTP/1.1 fault-injection proxy on ``127.0.0.1:<ephemeral port>`` in front of ``upstream``.

    ``upstream``: an :class:`~zarrtok.testing.s3server.S3Server` (or anything with ``host`` and
    ``port``), a ``(host, port)`` tuple, or an ``http://127.0.0.1:PORT`` URL. Use as a context
    manager, or ``start()`` / ``stop()``. The constructor starts nothing.
    """

    def __init__(self, upstream: Any, *, rules: Iterable[Rule] = (), seed: int = 0,
                 upstream_timeout: float = 30.0) -> None:
        self.upstream_host, self.upstream_port = _upstream_address(upstream)
        self._upstream_obj = upstream if hasattr(upstream, "storage_options") else None
        self.upstream_timeout = upstream_timeout
        self.rng = random.Random(seed)
        self._lock = threading.Lock()
        self._rules: list[Rule] = list(rules)
        self._events: list[ProxyEvent] = []
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._connections: dict[socket.socket, threading.Thread] = {}
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.connections_accepted = 0

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        if self._listener is not None:
            return self
        self._stopping.clear()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        listener.settimeout(0.1)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"fault-proxy-{self.port}",
                                               daemon=True)
        self._accept_thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every client connection (blackholed ones too) and join the threads
        (each for at most ``timeout`` seconds in all; they are daemons)."""
        if self._listener is None:
            return
        self._stopping.set()
        deadline = time.monotonic() + timeout
        if self._accept_thread is not None:
            self._accept_thread.join(max(0.0, deadline - time.monotonic()))
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            connections = list(self._connections.items())
        for sock, _ in connections:
            _hard_close(sock)
        for _, thread in connections:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._listener = None
        self._accept_thread = None

    close = stop

    def __enter__(self) -> FaultProxy:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._listener is not None and not self._stopping.is_set()

    # -- endpoints ----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("FaultProxy not started")
        return f"http://127.0.0.1:{self.port}"

    endpoint_url = url

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec / s3fs options that go through the proxy (a fresh dict each time): the upstream
        server's options with the proxy's endpoint."""
        if self._upstream_obj is not None:
            options = dict(self._upstream_obj.storage_options)
            client_kwargs = dict(options.get("client_kwargs") or {})
        else:
            options = {"key": DUMMY_KEY, "secret": DUMMY_SECRET}
            client_kwargs = {"region_name": REGION}
        client_kwargs["endpoint_url"] = self.url
        options["client_kwargs"] = client_kwargs
        return options

    def client(self, **config: Any):
        """A boto3 S3 client through the proxy (dummy credentials); ``config``: botocore Config kwargs."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.url, region_name=REGION, aws_access_key_id=DUMMY_KEY,
                            aws_secret_access_key=DUMMY_SECRET, config=Config(**config) if config else None)

    # -- rules --------------------------------------------------------------------------------------
    def add(self, *rules: Rule) -> Rule:
        """Append rules (they apply to requests read from now on); returns the last one."""
        if not rules:
            raise TypeError("add() needs at least one rule")
        with self._lock:
            self._rules.extend(rules)
        return rules[-1]

    def remove(self, rule: Rule) -> None:
        with self._lock:
            self._rules = [r for r in self._rules if r is not rule]

    def clear(self) -> None:
        """Remove every rule: from now on requests pass through."""
        with self._lock:
            self._rules.clear()

    @property
    def rules(self) -> list[Rule]:
        with self._lock:
            return list(self._rules)

    # -- the log ------------------------------------------------------------------------------------
    @property
    def events(self) -> list[ProxyEvent]:
        """A snapshot of the log (after in-flight answers finished, for at most 5 s; blackholed
        requests stay in flight)."""
        self.settle()
        with self._lock:
            return list(self._events)

    def settle(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(e.done or e.fault == "blackhole" for e in self._events):
                    return
            time.sleep(0.005)

    def reset_log(self) -> None:
        self.settle()
        with self._lock:
            self._events.clear()

    def counts(self) -> collections.Counter:
        """``Counter`` of events by fault name (``"pass"`` for untouched requests)."""
        return collections.Counter(e.fault or "pass" for e in self.events)

    def count(self, fault: str | None = None) -> int:
        """Requests seen (``fault=None``) or those ``fault`` was applied to (``"pass"``: untouched)."""
        events = self.events
        if fault is None:
            return len(events)
        return sum(1 for e in events if (e.fault or "pass") == fault)

    def summary(self) -> str:
        """One line per request, for assertion messages."""
        lines = []
        for e in self.events:
            lines.append(f"{e.method} {e.path}{'?' + e.query if e.query else ''} range={e.range} "
                         f"fault={e.fault or 'pass'} -> {e.status} {e.bytes_sent}B"
                         f"{' ' + repr(e.detail) if e.detail else ''}{' error=' + e.error if e.error else ''}")
        return "\n".join(lines)

    # -- internals ----------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections_accepted += 1
                serial = self.connections_accepted
            thread = threading.Thread(target=self._serve_connection, args=(sock, serial),
                                      name=f"fault-proxy-{self.port}-conn", daemon=True)
            with self._lock:
                if self._stopping.is_set():
                    _hard_close(sock)
                    break
                self._connections[sock] = thread
            thread.start()

    def _choose(self, method: str, path: str, query: str, has_range: bool) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.exhausted or not rule.matches(method, path, query, has_range):
                    continue
                rule.seen += 1
                if rule.seen <= rule.after:
                    continue
                if rule.probability < 1.0 and self.rng.random() >= rule.probability:
                    continue
                rule.applied += 1
                return rule
        return None

    def _serve_connection(self, sock: socket.socket, serial: int) -> None:
        reader = _Reader(sock, self._stopping)
        upstream: http.client.HTTPConnection | None = None
        try:
            while not self._stopping.is_set():
                try:
                    request = reader.read_request()
                except _Closed:
                    return
                if request is None:
                    return
                event = ProxyEvent(method=request.method, path=request.path, query=request.query,
                                   range=request.header("range"), connection=serial)
                with self._lock:
                    self._events.append(event)
                try:
                    keep_open, upstream = self._handle(sock, reader, request, event, upstream)
                except (_Closed, OSError) as exc:
                    event.error = event.error or f"{type(exc).__name__}: {exc}"
                    return
                finally:
                    event.done = True
                    event.finished = time.monotonic()
                if not keep_open:
                    return
        except Exception:  # noqa: BLE001 - a proxy thread must never take the test run down
            return
        finally:
            if upstream is not None:
                upstream.close()
            _hard_close(sock)
            with self._lock:
                self._connections.pop(sock, None)

    def _handle(self, sock: socket.socket, reader: _Reader, request: _HttpRequest, event: ProxyEvent,
                upstream: http.client.HTTPConnection | None) -> tuple[bool, http.client.HTTPConnection | None]:
        """Answer one request; return (keep the client connection open, the upstream connection)."""
        rule = self._choose(request.method, request.path, request.query, request.header("range") is not None)
        fault = rule.fault if rule is not None else None
        event.fault, event.rule = fault, rule
        params = rule.params if rule is not None else {}

        if fault == "blackhole":
            self._wait_until_closed(sock)
            return False, upstream
        if fault == "delay" and params["before"]:
            self._sleep(params["seconds"])
        forward = fault in (None, "delay", "truncate", "flip_bits") or params.get("forward", False)
        response: _HttpResponse | None = None
        if forward:
            upstream, response = self._forward(request, upstream, event)
        if fault == "drop":
            return False, upstream
        if fault == "status":
            response = _error_response(params["code"], params["body"], params["headers"], request)
        if fault == "delay" and not params["before"]:
            self._sleep(params["seconds"])
        if self._stopping.is_set():
            raise _Closed()
        assert response is not None
        keep_open = request.keep_alive and not response.close
        body = response.body
        if fault == "flip_bits":
            body, bits = _flip(body, params["count"], params["positions"], self.rng, self._lock)
            event.detail["bits"] = bits
        kept = None
        if fault == "truncate":
            n = params["n_bytes"]
            kept = n if n >= 0 else max(0, len(body) + n)
            if kept >= len(body):
                kept = max(0, len(body) - 1)
            event.detail["kept"] = kept
            keep_open = False
        head = response.head(keep_open, send_body=request.method != "HEAD")
        event.status = response.status
        event.content_length = response.content_length_sent(request.method)
        sock.sendall(head)
        if request.method != "HEAD" and response.has_body:
            payload = body if kept is None else body[:kept]
            if payload:
                sock.sendall(payload)
            event.bytes_sent = len(payload)
        return keep_open, upstream

    def _forward(self, request: _HttpRequest, upstream: http.client.HTTPConnection | None,
                 event: ProxyEvent) -> tuple[http.client.HTTPConnection | None, _HttpResponse]:
        for attempt in range(2):
            fresh = upstream is None
            if upstream is None:
                upstream = http.client.HTTPConnection(self.upstream_host, self.upstream_port,
                                                      timeout=self.upstream_timeout)
            try:
                upstream.putrequest(request.method, request.target, skip_host=True, skip_accept_encoding=True)
                for name, value in request.forward_headers():
                    upstream.putheader(name, value)
                upstream.endheaders(request.body if request.body or request.header("content-length") else None)
                resp = upstream.getresponse()
                body = resp.read()
                response = _HttpResponse(resp.status, resp.reason, resp.getheaders(), body,
                                         close=False, has_body=_response_has_body(request.method, resp.status))
                if resp.will_close:
                    upstream.close()
                    upstream = None
                event.forwarded = True
                event.upstream_status = resp.status
                return upstream, response
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                upstream.close()
                upstream = None
                if fresh or attempt == 1:  # a reused keep-alive connection may have been closed: retry once
                    event.error = f"upstream: {type(exc).__name__}: {exc}"
                    return None, _error_response(502, None, {}, request)
            except (OSError, http.client.HTTPException) as exc:
                upstream.close()
                event.error = f"upstream: {type(exc).__name__}: {exc}"
                return None, _error_response(502, None, {}, request)
        raise AssertionError("unreachable")

    def _sleep(self, seconds: float) -> None:
        if self._stopping.wait(seconds):
            raise _Closed()

    def _wait_until_closed(self, sock: socket.socket) -> None:
        """Hold a blackholed connection: discard what the client sends until it closes or we stop."""
        while not self._stopping.is_set():
            try:
                readable, _, _ = select.select([sock], [], [], 0.05)
            except (OSError, ValueError):
                return
            if readable:
                try:
                    if not sock.recv(65536):
                        return
                except OSError:
                    return


# -- HTTP plumbing -------------------------------------------------------------------------------------
class _HttpRequest:
    def __init__(self, method: str, target: str, version: str, headers: list[tuple[str, str]], body: bytes):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.body = body
        path, _, query = target.partition("?")
        if path.startswith(("http://", "https://")):  # absolute form (a client configured with us as proxy)
            path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
        self.path = path
        self.query = query

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def keep_alive(self) -> bool:
        connection = (self.header("connection") or "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection

    def forward_headers(self) -> list[tuple[str, str]]:
        out = []
        for name, value in self.headers:
            lower = name.lower()
            if lower in _HOP_BY_HOP or lower == "expect":
                continue
            if lower == "content-length":
                value = str(len(self.body))
            out.append((name, value))
        if self.header("transfer-encoding") is not None and self.header("content-length") is None:
            out.append(("Content-Length", str(len(self.body))))
        return out


class _HttpResponse:
    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes, *,
                 close: bool, has_body: bool):
        self.status = status
        self.reason = reason or http.client.responses.get(status, "")
        self.headers = headers
        self.body = body
        self.close = close
        self.has_body = has_body

    def _content_length_header(self) -> str | None:
        for key, value in self.headers:
            if key.lower() == "content-length":
                return value
        return None

    def content_length_sent(self, method: str) -> int | None:
        if method == "HEAD" or not self.has_body:
            value = self._content_length_header()
            return int(value) if value and value.isdigit() else None
        return len(self.body)

    def head(self, keep_open: bool, *, send_body: bool) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {self.reason}"]
        for name, value in self.headers:
            lower = name.lower()
            if lower in _HOP_BY_HOP:
                continue
            if lower == "content-length" and send_body and self.has_body:
                continue  # rewritten below (the upstream's chunked body was decoded)
            lines.append(f"{name}: {value}")
        if send_body and self.has_body:
            lines.append(f"Content-Length: {len(self.body)}")
        lines.append("Connection: keep-alive" if keep_open else "Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _response_has_body(method: str, status: int) -> bool:
    return not (method == "HEAD" or 100 <= status < 200 or status in (204, 304))


def _error_response(code: int, body: bytes | None, headers: dict[str, str], request: _HttpRequest) -> _HttpResponse:
    if body is None:
        error = _S3_ERROR_CODES.get(code, "InternalError")
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{error}</Code>'
                f"<Message>injected by FaultProxy</Message><Resource>{request.path}</Resource>"
                f"<RequestId>faultproxy</RequestId></Error>").encode()
        default_headers = {"Content-Type": "application/xml"}
    else:
        default_headers = {"Content-Type": "application/octet-stream"}
    default_headers.update(headers)
    has_body = _response_has_body(request.method, code)
    hdrs = list(default_headers.items())
    if not has_body:
        hdrs.append(("Content-Length", str(len(body)) if request.method == "HEAD" else "0"))
    return _HttpResponse(code, http.client.responses.get(code, ""), hdrs, body, close=False, has_body=has_body)


def _flip(body: bytes, count: int, positions: list[int] | None, rng: random.Random,
          lock: threading.Lock) -> tuple[bytes, list[int]]:
    nbits = len(body) * 8
    if positions is not None:
        bits = [p for p in positions if 0 <= p < nbits]
    else:
        with lock:
            bits = sorted(rng.sample(range(nbits), min(count, nbits)))
    out = bytearray(body)
    for p in bits:
        out[p // 8] ^= 1 << (p % 8)
    return bytes(out), bits


class _Reader:
    """Buffered reads of HTTP requests from a client socket; wakes up on stop."""

    def __init__(self, sock: socket.socket, stopping: threading.Event):
        self.sock = sock
        self.stopping = stopping
        self.buffer = bytearray()

    def _fill(self) -> bool:
        while True:
            if self.stopping.is_set():
                raise _Closed()
            try:
                readable, _, _ = select.select([self.sock], [], [], 0.1)
            except (OSError, ValueError):
                raise _Closed()
            if not readable:
                continue
            try:
                data = self.sock.recv(65536)
            except OSError:
                raise _Closed()
            if not data:
                return False
            self.buffer += data
            return True

    def _read_exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not self._fill():
                raise _Closed()
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    def _read_line(self) -> bytes:
        while True:
            i = self.buffer.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buffer[:i])
                del self.buffer[:i + 2]
                return line
            if len(self.buffer) > _MAX_HEAD:
                raise _Closed()
            if not self._fill():
                raise _Closed()

    def read_request(self) -> _HttpRequest | None:
        """The next request, or None when the client closed the connection between requests."""
        while True:  # skip stray blank lines between requests
            while not self.buffer:
                if not self._fill():
                    return None
            line = self._read_line()
            if line:
                break
        parts = line.decode("latin-1").split()
        if len(parts) != 3:
            raise _Closed()
        method, target, version = parts
        headers: list[tuple[str, str]] = []
        size = 0
        while True:
            line = self._read_line()
            if not line:
                break
            size += len(line)
            if size > _MAX_HEAD:
                raise _Closed()
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        request = _HttpRequest(method, target, version, headers, b"")
        if (request.header("expect") or "").lower() == "100-continue":
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in (request.header("transfer-encoding") or "").lower():
            request.body = self._read_chunked()
        else:
            length = request.header("content-length")
            request.body = self._read_exact(int(length)) if length else b""
        return request

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size = int(self._read_line().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self._read_line():  # trailers
                    pass
                return bytes(body)
            body += self._read_exact(size)
            self._read_line()


def _hard_close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _upstream_address(upstream: Any) -> tuple[str, int]:
    if isinstance(upstream, str):
        from urllib.parse import urlsplit

        parts = urlsplit(upstream if "//" in upstream else "http://" + upstream)
        if parts.scheme != "http" or parts.port is None:
            raise ValueError(f"upstream must be http://127.0.0.1:PORT, got {upstream!r}")
        host, port = parts.hostname or "", parts.port
    elif isinstance(upstream, tuple):
        host, port = upstream
    else:
        host, port = upstream.host, upstream.port
    if host not in _LOOPBACK_HOSTS:
        raise ValueError(f"FaultProxy only forwards to loopback (127.0.0.1), not {host!r}")
    return "127.0.0.1", int(port)
