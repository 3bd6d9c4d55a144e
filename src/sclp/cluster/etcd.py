"""etcd v3 through its JSON gateway: KV, leases and transactions with failover between
the configured URLs, and a watch stream of our own.

Why this client.  etcd's HTTP/JSON gateway (grpc-gateway, ``/v3/...``) is spoken
directly with ``requests``: no gRPC, no protobuf version to pin.  The unary calls
(range, put, txn, lease grant/keep-alive/revoke) are JSON POSTs with base64 keys and
values, one :class:`requests.Session` per URL (its connection is reused), each
request bounded by a timeout.  ``etcd3gw`` (OpenStack) wraps the same POSTs but brings
futurist, debtcollector, wrapt and pbr, and its watch we could not use: measured
against etcd 3.4.23, an ``etcd3gw`` 2.7.0 watch never recovers from an etcd restart
(its reader thread dies on the final error chunk and the iterator blocks forever),
and with no read timeout a silently partitioned member leaves it hanging.
:class:`WatchStream` is a small HTTP/1.1 client for the gateway's streaming
``/v3/watch``: a socket the caller can ``select()`` on next to its timers (so one
thread does all the I/O), a start revision to resume from, ``progress_notify`` so that
an idle stream still carries a message every interval (etcd's
``--experimental-watch-progress-notify-interval``), and the ``hasleader`` requirement
so that a member that loses its leader cancels the watch instead of going quiet.  The
caller treats silence longer than its read timeout as a dead member.  The gRPC clients
(``etcd3``, unmaintained since 2020, and its forks) would add grpcio and a protobuf pin
to an endpoint that has neither.

Failover: :class:`Etcd` sends each request to its current URL; a connection failure,
a timeout, an answer that says the member cannot serve (HTTP 408, 500, 503, 504) or
one that is not JSON moves it to the next URL and retries there, once round the list,
before raising :class:`EtcdUnavailableError`.  etcd 3.4 or later (the ``/v3/`` gateway path).
"""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

API = "/v3/"
REQUEST_TIMEOUT = 2.0
CONNECT_TIMEOUT = 1.0
# Answers that say this member cannot serve now (no leader, overloaded, timed out):
# the next URL may.  Any other error status is etcd refusing the request itself.
RETRY_STATUS = frozenset({408, 500, 503, 504})


class EtcdError(Exception):
    """etcd refused a request, or could not be reached; the message is one line."""


class EtcdUnavailableError(EtcdError):
    """No configured etcd URL answered (connection refused, timed out, no leader)."""


class LeaseNotFoundError(EtcdError):
    """The lease expired or was revoked: its keys are gone."""


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_range_end(prefix: bytes) -> bytes:
    """The end of the key range that holds every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\0"  # every key
    end[-1] += 1
    return bytes(end)


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


def _kv(item: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_unb64(item["key"]).decode("utf-8", "replace"),
        value=_unb64(item.get("value", "")),
        create_revision=int(item.get("create_revision", 0)),
        mod_revision=int(item.get("mod_revision", 0)),
        lease=int(item.get("lease", 0)),
    )


@dataclass(frozen=True)
class Endpoint:
    url: str
    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an etcd URL like http://10.0.0.5:2379")
        return cls(url.rstrip("/"), parts.scheme, parts.hostname, parts.port or 2379)


def _one_line(exc: BaseException) -> str:
    """A request's failure (requests' exception) in one short line."""
    text = str(exc) or exc.__class__.__name__
    # requests' messages bury the cause in reprs: keep the cause.
    for pattern, fmt in (
        (r"\[Errno -?\d+\] ([^'\"\)]+)", "{}"),
        (r"\[SSL: [A-Z_]+\] ([^'\"(]+)", "TLS: {}"),
        (r"(SSLV3_ALERT_[A-Z_]+|TLSV1_ALERT_[A-Z_]+)", "TLS: {}"),
        (r"SSL\w*Error\(\d+, '([^'(]+)", "TLS: {}"),
        (r"(Read timed out|Connection aborted|RemoteDisconnected[^'\"]*)", "{}"),
        (r"(timed out)", "{}"),
    ):
        found = re.search(pattern, text)
        if found and ("Pool(" in text or "Max retries" in text or "Connection" in text):
            return fmt.format(found.group(1).strip().rstrip(".").lower())
    return " ".join(text.split())[:300]


def _http_error(response: requests.Response) -> str:
    """An error answer in one line: the gateway's ``message`` (gRPC's error text, as
    ``etcdserver: requested lease not found``), else the status and the body's start."""
    try:
        message = response.json().get("message")
    except (ValueError, AttributeError):
        message = None
    if isinstance(message, str) and message.strip():
        return " ".join(message.split())[:300]
    status = f"HTTP {response.status_code} {response.reason or ''}".strip()
    body = " ".join(response.text.split())[:200]
    return f"{status}: {body}" if body else status


class _Session(requests.Session):
    """A requests session whose CA file wins over ``REQUESTS_CA_BUNDLE`` and
    ``CURL_CA_BUNDLE`` (requests lets those override a session's ``verify``)."""

    def __init__(self, ca: str | None) -> None:
        super().__init__()
        self._ca = ca
        if ca is not None:
            self.verify = ca

    def merge_environment_settings(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        settings: dict[str, Any] = super().merge_environment_settings(*args, **kwargs)
        if self._ca is not None:
            settings["verify"] = self._ca
        return settings


class Etcd:
    """A synchronous etcd client over several URLs (one etcd cluster).  Not
    thread-safe: one thread uses it (the agent's, or the CLI's)."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        timeout: float = REQUEST_TIMEOUT,
        cancelled: Callable[[], bool] | None = None,
    ) -> None:
        """``timeout``: seconds per request and URL.  ``cancelled``: asked before each
        attempt; when it says yes, the request gives up (EtcdUnavailableError) instead
        of trying the next URL (a stopping agent)."""
        if not urls:
            raise ValueError("no etcd URL given")
        self.endpoints = [Endpoint.parse(u) for u in urls]
        self.ca, self.cert, self.key = ca, cert, key
        self.timeout = timeout
        self._cancelled = cancelled or (lambda: False)
        self._sessions: list[requests.Session] = []
        for _ in self.endpoints:
            session = _Session(ca)
            if cert is not None and key is not None:
                session.cert = (cert, key)
            self._sessions.append(session)
        self.current = 0

    @property
    def url(self) -> str:
        return self.endpoints[self.current].url

    def fail_over(self) -> None:
        """Use the next URL from now on (after a failure not seen by a request)."""
        self.current = (self.current + 1) % len(self.endpoints)

    def close(self) -> None:
        for session in self._sessions:
            session.close()

    def _post(
        self,
        path: str,
        body: dict[str, Any],
        *,
        one_url: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """POST ``body`` to ``path`` at the current URL, failing over on connection
        errors, timeouts, answers that say the member cannot serve and answers that
        are not JSON; the decoded JSON answer.  A request etcd refuses raises EtcdError
        (LeaseNotFoundError for a missing lease) without failing over."""
        errors = []
        attempts = 1 if one_url else len(self.endpoints)
        for _ in range(attempts):
            if self._cancelled() and not one_url:
                errors.append("stopping")
                break
            url = self.url
            try:
                response = self._sessions[self.current].post(
                    url + API + path, json=body, timeout=timeout or self.timeout
                )
            except requests.RequestException as exc:
                failure = _one_line(exc)
            else:
                if response.status_code == 200:
                    try:
                        answer = response.json()
                    except ValueError:
                        answer = None
                    if isinstance(answer, dict):
                        return answer
                    failure = "bad answer: not a JSON object (is this etcd's client URL?)"
                elif response.status_code in RETRY_STATUS:
                    failure = _http_error(response)
                else:
                    text = _http_error(response)
                    if "lease not found" in text:
                        raise LeaseNotFoundError(text)
                    raise EtcdError(f"{url}: {text}")
            errors.append(f"{url}: {failure}")
            if not one_url:
                self.fail_over()
        raise EtcdUnavailableError("; ".join(errors))

    # -- KV ------------------------------------------------------------------------

    def range_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` and the store's revision of that read."""
        raw = prefix.encode()
        answer = self._post(
            "kv/range", {"key": _b64(raw), "range_end": _b64(prefix_range_end(raw))}
        )
        revision = int(answer["header"]["revision"])
        return [_kv(item) for item in answer.get("kvs", [])], revision

    def get(self, key: str) -> KeyValue | None:
        answer = self._post("kv/range", {"key": _b64(key)})
        kvs = answer.get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Put ``key`` (under ``lease`` if not 0); the new revision."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int(self._post("kv/put", body)["header"]["revision"])

    def delete(self, key: str) -> int:
        return int(self._post("kv/deleterange", {"key": _b64(key)})["header"]["revision"])

    def put_unless_taken(self, key: str, value: bytes, lease: int) -> KeyValue | None:
        """Put ``key`` under ``lease`` if it does not exist or is already under that
        lease; otherwise leave it and return the key as it is (someone else's)."""
        k = _b64(key)
        put = {"request_put": {"key": k, "value": _b64(value), "lease": str(lease)}}
        for compare in (
            {"key": k, "target": "LEASE", "result": "EQUAL", "lease": str(lease)},
            {"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"},
        ):
            answer = self._post(
                "kv/txn",
                {
                    "compare": [compare],
                    "success": [put],
                    "failure": [{"request_range": {"key": k}}],
                },
            )
            if answer.get("succeeded"):
                return None
        taken = answer.get("responses", [{}])[0].get("response_range", {}).get("kvs", [])
        if not taken:  # deleted between the two transactions: try again later
            return KeyValue(key, b"", 0, 0, 0)
        return _kv(taken[0])

    def create(
        self, key: str, value: bytes, lease: int = 0, *, held: tuple[str, int] | None = None
    ) -> bool:
        """Create ``key`` (under ``lease`` if not 0) only if it does not exist and, with
        ``held`` = (another key, a lease), only if that key is held under that lease;
        whether it was created (one transaction)."""
        k = _b64(key)
        compare: list[dict[str, str]] = [
            {"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
        ]
        if held is not None:
            compare.append(
                {"key": _b64(held[0]), "target": "LEASE", "result": "EQUAL", "lease": str(held[1])}
            )
        put: dict[str, str] = {"key": k, "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        answer = self._post("kv/txn", {"compare": compare, "success": [{"request_put": put}]})
        return bool(answer.get("succeeded"))

    def move_lease(self, key: str, value: bytes, old: int, new: int) -> bool:
        """Put ``key`` under lease ``new`` if it still has ``value`` under lease ``old``;
        whether it moved."""
        k = _b64(key)
        answer = self._post(
            "kv/txn",
            {
                "compare": [
                    {"key": k, "target": "VALUE", "result": "EQUAL", "value": _b64(value)},
                    {"key": k, "target": "LEASE", "result": "EQUAL", "lease": str(old)},
                ],
                "success": [{"request_put": {"key": k, "value": _b64(value), "lease": str(new)}}],
            },
        )
        return bool(answer.get("succeeded"))

    def delete_if(self, key: str, value: bytes) -> bool:
        """Delete ``key`` only if its value is ``value``; whether it was deleted."""
        k = _b64(key)
        answer = self._post(
            "kv/txn",
            {
                "compare": [{"key": k, "target": "VALUE", "result": "EQUAL", "value": _b64(value)}],
                "success": [{"request_delete_range": {"key": k}}],
            },
        )
        return bool(answer.get("succeeded"))

    # -- leases ----------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        return int(self._post("lease/grant", {"TTL": str(ttl), "ID": "0"})["ID"])

    def keep_alive(self, lease: int) -> int:
        """Refresh ``lease``; its TTL in seconds.  LeaseNotFoundError when it is gone."""
        answer = self._post("lease/keepalive", {"ID": str(lease)})
        ttl = int(answer.get("result", {}).get("TTL", -1))
        if ttl <= 0:
            raise LeaseNotFoundError(f"lease {lease:x} has expired")
        return ttl

    def revoke(self, lease: int) -> None:
        """Revoke ``lease`` (its keys go at once); one short attempt at the current
        URL (a stopping agent does not wait long for it: the lease expires anyway)."""
        self._post("kv/lease/revoke", {"ID": str(lease)}, one_url=True, timeout=0.5)

    def time_to_live(self, lease: int) -> tuple[int, int]:
        """(granted TTL, remaining TTL) of ``lease``; remaining is -1 if it is gone."""
        answer = self._post("kv/lease/timetolive", {"ID": str(lease)})
        return int(answer.get("grantedTTL", 0)), int(answer.get("TTL", -1))

    # -- watch ----------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int) -> WatchStream:
        """A watch of every key under ``prefix`` from ``start_revision``, at the
        current URL (no failover here: the caller fails over on any error)."""
        raw = prefix.encode()
        request = {
            "create_request": {
                "key": _b64(raw),
                "range_end": _b64(prefix_range_end(raw)),
                "start_revision": str(start_revision),
                "progress_notify": True,
            }
        }
        return WatchStream(
            self.endpoints[self.current], request, self._ssl_context(), CONNECT_TIMEOUT
        )

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.endpoints[self.current].scheme != "https":
            return None
        context = ssl.create_default_context(cafile=self.ca)
        if self.cert is not None and self.key is not None:
            context.load_cert_chain(self.cert, self.key)
        return context


@dataclass(frozen=True)
class WatchEvent:
    deleted: bool
    kv: KeyValue


@dataclass
class WatchMessage:
    """One response of the watch stream: its revision and events, or that the
    watch was created, or cancelled (``compact_revision`` > 0: resync needed)."""

    revision: int
    events: list[WatchEvent]
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    reason: str = ""


class WatchStream:
    """The gateway's streaming ``POST /v3/watch`` on a socket of our own.

    Connecting sends the request and reads the response headers (bounded by
    ``timeout``).  Then the owner ``select()``s on :meth:`fileno` and calls
    :meth:`read` when it is readable; :meth:`read` never blocks for long (the socket
    has a short timeout) and raises :class:`EtcdUnavailableError` when the stream ends or
    breaks.  The owner closes it."""

    def __init__(
        self,
        endpoint: Endpoint,
        request: dict[str, Any],
        context: ssl.SSLContext | None,
        timeout: float,
    ) -> None:
        self.endpoint = endpoint
        self._buffer = bytearray()  # body bytes not yet split into lines
        self._raw = bytearray()  # chunked transfer bytes not yet decoded
        self._ended = False
        self._ready: list[WatchMessage] = []
        try:
            sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
        except OSError as exc:
            raise EtcdUnavailableError(f"{endpoint.url}: watch: {exc}") from None
        try:
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=endpoint.host)
            body = json.dumps(request).encode()
            host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
            head = (
                f"POST {API}watch HTTP/1.1\r\nHost: {host}:{endpoint.port}\r\n"
                "Content-Type: application/json\r\nGrpc-Metadata-Hasleader: true\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            sock.sendall(head.encode() + body)
            self._sock = sock
            self._read_headers(time.monotonic() + timeout)
            # Messages that came with the headers: read() hands them out first.
            self._ready = self._parse()
        except (OSError, EtcdError) as exc:
            sock.close()
            if isinstance(exc, EtcdError):
                raise
            raise EtcdUnavailableError(f"{endpoint.url}: watch: {exc}") from None
        sock.settimeout(0.5)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def _recv(self) -> bytes:
        data = self._sock.recv(65536)
        if not data:
            raise EtcdUnavailableError(f"{self.endpoint.url}: watch stream closed")
        return data

    def _read_headers(self, deadline: float) -> None:
        while b"\r\n\r\n" not in self._raw:
            if time.monotonic() > deadline or len(self._raw) > 65536:
                raise EtcdUnavailableError(f"{self.endpoint.url}: watch: no answer")
            self._sock.settimeout(max(0.01, deadline - time.monotonic()))
            self._raw += self._recv()
        head, _, rest = bytes(self._raw).partition(b"\r\n\r\n")
        self._raw = bytearray(rest)
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or status[1] != "200":
            raise EtcdUnavailableError(f"{self.endpoint.url}: watch: {lines[0]}")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
        if headers.get("transfer-encoding", "").lower() != "chunked":
            raise EtcdUnavailableError(f"{self.endpoint.url}: watch: answer not chunked")

    def has_ready(self) -> bool:
        """Are there messages to hand out without reading (call :meth:`read` now,
        without waiting for the socket)?"""
        return bool(self._ready)

    def read(self) -> list[WatchMessage]:
        """The complete messages that have arrived (maybe none).  Call it when the
        socket is readable or :meth:`has_ready` says so."""
        if self._ready:
            ready, self._ready = self._ready, []
            return ready
        try:
            self._raw += self._recv()
            pending = getattr(self._sock, "pending", None)
            while pending is not None and pending():
                self._raw += self._recv()
        except TimeoutError:
            pass  # a TLS record not complete yet: the rest comes with the next read
        except OSError as exc:
            raise EtcdUnavailableError(f"{self.endpoint.url}: watch: {exc}") from None
        messages = self._parse()
        if self._ended and not messages:
            raise EtcdUnavailableError(f"{self.endpoint.url}: watch stream ended")
        return messages  # if it ended, the caller sees :attr:`ended` after these

    def _parse(self) -> list[WatchMessage]:
        self._dechunk()
        messages = []
        while b"\n" in self._buffer:
            line, _, rest = bytes(self._buffer).partition(b"\n")
            self._buffer = bytearray(rest)
            if line.strip():
                messages.append(self._message(line))
        return messages

    @property
    def ended(self) -> bool:
        """The server ended the stream, and every message before the end was read."""
        return self._ended and not self._ready

    def _dechunk(self) -> None:
        while True:
            size_end = self._raw.find(b"\r\n")
            if size_end < 0:
                return
            try:
                size = int(bytes(self._raw[:size_end]).split(b";")[0], 16)
            except ValueError:
                raise EtcdUnavailableError(f"{self.endpoint.url}: watch: bad chunk") from None
            if size == 0:
                self._ended = True
                return
            if len(self._raw) < size_end + 2 + size + 2:
                return
            start = size_end + 2
            self._buffer += self._raw[start : start + size]
            del self._raw[: start + size + 2]

    def _message(self, line: bytes) -> WatchMessage:
        try:
            answer = json.loads(line)
        except ValueError:
            raise EtcdUnavailableError(f"{self.endpoint.url}: watch: bad message") from None
        if "error" in answer or "result" not in answer:
            error = answer.get("error", {})
            text = error.get("message") if isinstance(error, dict) else error
            raise EtcdUnavailableError(f"{self.endpoint.url}: watch: {text or 'error'}")
        result = answer["result"]
        header = result.get("header", {})
        events = [
            WatchEvent(deleted=e.get("type") == "DELETE", kv=_kv(e["kv"]))
            for e in result.get("events", [])
        ]
        return WatchMessage(
            revision=int(header.get("revision", 0)),
            events=events,
            created=bool(result.get("created")),
            canceled=bool(result.get("canceled")),
            compact_revision=int(result.get("compact_revision", 0)),
            reason=str(result.get("cancel_reason", "")),
        )
