"""A loopback OpenAI-compatible chat-completions server for tests: scripted replies, failures after the first `ok`
requests, the requests and their Authorization headers recorded."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeEndpoint:
    def __init__(
        self,
        reply: str | Callable[[dict], str] = "ok",
        ok: int = 10**9,
        fail: int = 503,
        headers: dict[str, str] | None = None,
        port: int = 0,
    ):
        """`reply`: the text of every completion, or a function of the request body. Requests after the first `ok`
        get HTTP `fail` with `headers` (e.g. {"retry-after-ms": "10"}). `port`: the port of a server that went down,
        to bring it back at the same address."""
        self.ok, self.bodies, self.auth = ok, [], []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    outer.bodies.append(body)
                    outer.auth.append(self.headers.get("Authorization"))
                    failing = len(outer.bodies) > outer.ok
                if failing:
                    self.send_response(fail)
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "overloaded"}}')
                    return
                text = reply(body) if callable(reply) else reply
                payload = {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body.get("model", ""),
                    "choices": [
                        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                    ],
                }
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def requests(self) -> int:
        return len(self.bodies)

    def __enter__(self) -> FakeEndpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
