"""A local HTTP server on 127.0.0.1 that answers the Kubernetes API calls of a test and records them.

It speaks the API's wire format as the official client expects it: JSON bodies, `Status` objects for errors,
and watch streams as newline-delimited `{"type": ..., "object": ...}` events. A test registers answers by
method and path (a fixed JSON body, or a function of the request) and pushes watch events into a path's
stream while the client is connected; every request is kept in `requests`. It knows nothing of Kubernetes'
semantics (no admission, defaulting, RBAC or scheduling): answers are what the test says they are.
"""
from __future__ import annotations

import json
import queue
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import yaml


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any  # parsed JSON, or the raw bytes of a protobuf body
    headers: dict[str, str]

    @property
    def is_watch(self) -> bool:
        return self.query.get("watch") in ("true", "1", "True")


Answer = Callable[[Request], tuple[int, Any]]


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message,
            "code": code}


class KubernetesApiServer:
    """Start with `start()`; `answer(...)`, `push(...)` while running; `close()` ends streams and the server."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.scheme = "http"
        self._answers: dict[tuple[str, str], Answer] = {}
        self._fallbacks: dict[str, Answer] = {}
        self._streams: dict[str, queue.Queue] = {}
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self, certificate: tuple[Path, Path] | None = None) -> "KubernetesApiServer":
        """Serve plain HTTP, or HTTPS with (certificate file, key file) as a pod's in-cluster config needs."""
        if certificate is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*map(str, certificate))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def write_kubeconfig(self, path: Path, namespace: str) -> Path:
        """A kubeconfig whose current context reaches this server with a bearer token."""
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": "test-token"}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": namespace}}],
        }), encoding="utf-8")
        return path

    def answer(self, method: str, path: str, reply: Answer | Any, code: int = 200) -> None:
        """Answer METHOD PATH (query ignored) with `reply(request) -> (code, body)` or a fixed body."""
        self._answers[(method, path)] = reply if callable(reply) else (lambda request: (code, reply))

    def answer_any(self, method: str, reply: Answer) -> None:
        """Answer every METHOD request that has no answer of its own with `reply(request) -> (code, body)`."""
        self._fallbacks[method] = reply

    def push(self, path: str, kind: str, obj: dict[str, Any]) -> None:
        """Send one watch event to the client watching PATH (queued until it connects)."""
        self._stream(path).put({"type": kind, "object": obj})

    def end_stream(self, path: str) -> None:
        """End the current watch response on PATH (the server-side timeout of a real API server)."""
        self._stream(path).put(None)

    def calls(self, method: str | None = None, path: str | None = None, watch: bool | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if (method is None or r.method == method)
                    and (path is None or r.path == path) and (watch is None or r.is_watch == watch)]

    def _stream(self, path: str) -> queue.Queue:
        with self._lock:
            return self._streams.setdefault(path, queue.Queue())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # watch events go out as chunks, the way the API server streams them

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                is_json = "json" in self.headers.get("Content-Type", "application/json")
                body = (json.loads(raw) if is_json else raw) if raw else None  # client-go may send protobuf
                request = Request(self.command, parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()},
                                  body, {k.lower(): v for k, v in self.headers.items()})
                with server._lock:
                    server.requests.append(request)
                if request.is_watch:
                    self._watch(request.path)
                    return
                answer = server._answers.get((request.method, request.path)) or server._fallbacks.get(request.method)
                code, body = answer(request) if answer else (404, status(404, "NotFound", f"{request.path} not found"))
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _watch(self, path: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                events = server._stream(path)
                while not server._closed.is_set():
                    try:
                        event = events.get(timeout=0.05)
                    except queue.Empty:
                        continue
                    if event is None:
                        break
                    line = json.dumps(event).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                    if event["type"] == "ERROR":  # the API server ends a watch after an ERROR event
                        break
                self.wfile.write(b"0\r\n\r\n")
                self.close_connection = True

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

        return Handler
