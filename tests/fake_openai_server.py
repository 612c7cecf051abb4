"""A stand-in OpenAI-compatible completion server with known step times, for the profile and
observe tests: it serves one request at a time (as llama-cpp-python's server does), takes
``prefill_base + prefill_token * prompt_tokens`` seconds to the first token and ``step`` seconds
per further token, and streams tokens as server-sent events. One word is one token."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class FakeEngine:
    prefill_base: float = 0.02
    prefill_token: float = 0.0005
    step: float = 0.01


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _json(self, code: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path != "/v1/completions":
            self._json(404, {"error": "not found"})
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        prompt = len(body["prompt"].split())
        n = int(body["max_tokens"])
        eng = self.server.engine
        if not body.get("stream"):
            with self.server.lock:
                time.sleep(eng.prefill_base + eng.prefill_token * prompt)
            self._json(
                200,
                {
                    "choices": [{"text": " x", "finish_reason": "length"}],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": 1},
                },
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        with self.server.lock:  # one request at a time
            time.sleep(eng.prefill_base + eng.prefill_token * prompt)
            for k in range(n):
                if k:
                    time.sleep(eng.step)
                chunk = {"choices": [{"text": " w", "index": 0, "finish_reason": None}]}
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.flush()
            last = {"choices": [{"text": "", "index": 0, "finish_reason": "length"}]}
            self.wfile.write(b"data: " + json.dumps(last).encode() + b"\n\ndata: [DONE]\n\n")
            self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, engine: FakeEngine):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.engine = engine
        self.lock = threading.Lock()


class FakeServer:
    """Context manager: a fake engine listening on 127.0.0.1, its base URL in ``url``."""

    def __init__(self, engine: FakeEngine = FakeEngine()):
        self._server = _Server(engine)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
