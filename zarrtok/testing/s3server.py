"""A real S3 protocol server on loopback for the object-storage tests.

moto's WSGI application (the one ``moto.server.ThreadedMotoServer`` serves) on
``werkzeug.serving.make_server("127.0.0.1", 0, ...)`` in a daemon thread of the test process, wrapped
in a small WSGI middleware that records every request: method, path, query, ``Range`` header,
response status and the number of response body bytes actually sent. Tests assert on that log
(what went over the wire), never on zarrtok's internals.

Everything stays on 127.0.0.1: dummy credentials, no proxy for loopback, no instance-metadata
lookups. Processes started by the tests (spawn, forkserver, fork) inherit the environment set here
and talk to the same server over HTTP, so the log also counts their requests.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable

DUMMY_KEY = "testing"
DUMMY_SECRET = "testing"
REGION = "us-east-1"

_LOOPBACK_ENV = {
    "AWS_ACCESS_KEY_ID": DUMMY_KEY,
    "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
    "AWS_SECURITY_TOKEN": DUMMY_KEY,
    "AWS_SESSION_TOKEN": DUMMY_KEY,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def loopback_environment() -> dict[str, str | None]:
    """The environment changes the server needs (``None`` = unset): dummy AWS credentials, no proxies."""
    env: dict[str, str | None] = dict(_LOOPBACK_ENV)
    for name in _PROXY_VARS:
        env[name] = None
    return env


def apply_environment(env: dict[str, str | None]) -> dict[str, str | None]:
    """Apply ``env`` to ``os.environ``; return the previous values (to restore with this same function)."""
    previous = {name: os.environ.get(name) for name in env}
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return previous


@dataclass
class Request:
    """One request as the server saw and answered it."""

    method: str
    path: str  # URL path, e.g. "/bucket/store/splits/train/shards/000000/tokens/c/3"
    query: str
    range: str | None  # the Range header, e.g. "bytes=0-1025"
    status: int | None = None
    bytes_sent: int = 0  # response body bytes actually handed to the socket
    content_length: int | None = None
    done: bool = False

    @property
    def range_bounds(self) -> tuple[int, int] | None:
        """``(first, last)`` byte of a ``bytes=first-last`` Range header (inclusive), else None."""
        if not self.range or not self.range.startswith("bytes="):
            return None
        first, _, last = self.range[len("bytes="):].partition("-")
        if not first or not last or "," in last:
            return None
        return int(first), int(last)

    @property
    def range_length(self) -> int | None:
        bounds = self.range_bounds
        return None if bounds is None else bounds[1] - bounds[0] + 1


class _Recorder:
    """WSGI middleware: records each request and counts the response bytes it yields."""

    def __init__(self, app: Any, log: list[Request], lock: threading.Lock):
        self.app = app
        self.log = log
        self.lock = lock

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        record = Request(
            method=environ.get("REQUEST_METHOD", ""),
            path=environ.get("PATH_INFO", ""),
            query=environ.get("QUERY_STRING", ""),
            range=environ.get("HTTP_RANGE"),
        )
        with self.lock:
            self.log.append(record)

        def recording_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None):
            record.status = int(status.split(" ", 1)[0])
            for name, value in headers:
                if name.lower() == "content-length":
                    try:
                        record.content_length = int(value)
                    except ValueError:
                        pass
            return start_response(status, headers, exc_info) if exc_info is not None else start_response(status, headers)

        result = self.app(environ, recording_start_response)
        return _CountingIterable(result, record)


class _CountingIterable:
    def __init__(self, inner: Iterable[bytes], record: Request):
        self.inner = inner
        self.record = record

    def __iter__(self):
        for piece in self.inner:
            self.record.bytes_sent += len(piece)
            yield piece

    def close(self) -> None:
        try:
            close = getattr(self.inner, "close", None)
            if close is not None:
                close()
        finally:
            self.record.done = True


class S3Server:
    """moto's S3 on ``127.0.0.1:<ephemeral port>``, with a request log. ``stop()`` when done."""

    def __init__(self) -> None:
        from moto.server import DomainDispatcherApplication, create_backend_app
        from moto.moto_server.werkzeug_app import MotoRequestHandler
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._previous_env = apply_environment(loopback_environment())
        self._lock = threading.Lock()
        self._log: list[Request] = []
        app = _Recorder(DomainDispatcherApplication(create_backend_app), self._log, self._lock)
        self._server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
        self.host, self.port = self._server.server_address[:2]
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto-s3", daemon=True)
        self._thread.start()
        self._stopped = False

    # -- clients -------------------------------------------------------------------------------------
    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec / s3fs options for this server (a fresh dict each time)."""
        return {
            "key": DUMMY_KEY,
            "secret": DUMMY_SECRET,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": REGION},
        }

    def client(self):
        """A boto3 S3 client for this server (dummy credentials)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=REGION,
                            aws_access_key_id=DUMMY_KEY, aws_secret_access_key=DUMMY_SECRET)

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def list_keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """``{key: size}`` of every object under ``prefix`` (boto3; these requests are logged too)."""
        out: dict[str, int] = {}
        paginator = self.client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = int(obj["Size"])
        return out

    # -- the log -------------------------------------------------------------------------------------
    def reset_log(self) -> None:
        self.settle()
        with self._lock:
            self._log.clear()

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until every logged request has finished sending its response."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(r.done for r in self._log):
                    return
            time.sleep(0.005)

    @property
    def requests(self) -> list[Request]:
        """A snapshot of the log (after in-flight responses finished)."""
        self.settle()
        with self._lock:
            return list(self._log)

    def select(self, method: str | None = None, path_contains: str | None = None) -> list[Request]:
        return [r for r in self.requests
                if (method is None or r.method == method) and (path_contains is None or path_contains in r.path)]

    def gets(self, path_contains: str | None = None) -> list[Request]:
        """GET requests (object reads and listings), optionally only those whose path contains a string."""
        return self.select("GET", path_contains)

    def object_gets(self, path_contains: str | None = None) -> list[Request]:
        """GETs of objects (no query string: not listings or other sub-resources)."""
        return [r for r in self.gets(path_contains) if not r.query]

    def bytes_sent(self, path_contains: str | None = None, method: str | None = "GET") -> int:
        return sum(r.bytes_sent for r in self.select(method, path_contains))

    def summary(self) -> str:
        """One line per request, for assertion messages."""
        return "\n".join(f"{r.method} {r.path}{'?' + r.query if r.query else ''} range={r.range} -> "
                         f"{r.status} {r.bytes_sent}B" for r in self.requests)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        apply_environment(self._previous_env)


if __name__ == "__main__":  # manual smoke test: python -m tests.s3server
    server = S3Server()
    try:
        server.make_bucket("smoke")
        import fsspec

        fs = fsspec.filesystem("s3", **server.storage_options)
        fs.pipe("smoke/x", b"0123456789")
        server.reset_log()
        print(fs.cat_file("smoke/x", start=2, end=6))
        print(server.summary())
    finally:
        server.stop()
