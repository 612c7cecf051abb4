"""A local server that speaks OpenAI's chat-completions protocol and answers from a script.

Tests (and manual end-to-end runs of a campaign) point the real ``openai`` client at it, so the
whole HTTP path is exercised: status codes, headers such as ``retry-after``, slow replies,
``usage`` fields. Replies are handed out in the order requests arrive; every request is recorded
with its JSON body, headers and timing, and the number of requests in flight at once is tracked.

In a test::

    with ChatServer([ok("```python\\n...\\n```"), rate_limited(0.2), error(500)]) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x")
        ...
        assert "def partition" in server.requests[0].user_text

From a shell (a JSON list of reply objects with the fields of ``Reply``)::

    python tests/chat_server.py --script replies.json --port 8000
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted answer. ``status`` other than 200 sends an OpenAI-style error body."""

    content: str | None = ""
    status: int = 200
    delay_s: float = 0.0  # wait before answering (longer than the client's timeout = a timeout)
    headers: dict[str, str] = field(default_factory=dict)
    prompt_tokens: int | None = 100  # None: no usage field at all
    completion_tokens: int | None = 50
    finish_reason: str = "stop"
    error_message: str = "scripted error"
    raw_body: str | None = None  # sent verbatim instead of the generated JSON


def ok(
    content: str, prompt_tokens: int | None = 100, completion_tokens: int | None = 50, **kwargs: Any
) -> Reply:
    return Reply(
        content, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, **kwargs
    )


def error(status: int, message: str = "scripted error", **kwargs: Any) -> Reply:
    return Reply(None, status=status, error_message=message, **kwargs)


def rate_limited(retry_after_s: float | None = None, retry_after_ms: float | None = None) -> Reply:
    headers = {}
    if retry_after_s is not None:
        headers["retry-after"] = f"{retry_after_s:g}"
    if retry_after_ms is not None:
        headers["retry-after-ms"] = f"{retry_after_ms:g}"
    return error(429, "Rate limit reached, please retry", headers=headers)


ReplySource = Reply | Callable[[dict], Reply]


@dataclass
class Received:
    """A request as the server saw it."""

    path: str
    headers: dict[str, str]  # names lower-cased
    body: dict
    started: float  # time.monotonic() on arrival
    finished: float = 0.0  # when the answer was written (or abandoned)

    @property
    def messages(self) -> list[dict]:
        return list(self.body.get("messages", []))

    def text(self, role: str) -> str:
        return "\n".join(str(m.get("content", "")) for m in self.messages if m.get("role") == role)

    @property
    def user_text(self) -> str:
        return self.text("user")

    @property
    def system_text(self) -> str:
        return self.text("system")

    @property
    def all_text(self) -> str:
        return "\n".join(str(m.get("content", "")) for m in self.messages)


class ChatServer:
    """Threaded HTTP server on 127.0.0.1 (ephemeral port by default); a context manager."""

    def __init__(
        self,
        script: Iterable[ReplySource] = (),
        *,
        port: int = 0,
        default: ReplySource | None = None,
    ):
        """``default`` answers once the script is used up; without one such a request gets a
        400 error saying so, which the client does not retry, so a test fails plainly."""
        self._script: list[ReplySource] = list(script)
        self._default = default
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.requests: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- control -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def push(self, *replies: ReplySource) -> None:
        with self._lock:
            self._script.extend(replies)

    @property
    def remaining(self) -> int:
        with self._lock:
            return len(self._script)

    def start(self) -> ChatServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes handlers sleeping on a scripted delay
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving -----------------------------------------------------------------------------

    def _next(self, body: dict) -> Reply:
        with self._lock:
            source = self._script.pop(0) if self._script else self._default
        if source is None:
            return error(400, "chat_server: no scripted reply left for this request")
        return source(body) if callable(source) else source

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

            def _send(
                self,
                status: int,
                payload: Any,
                headers: dict[str, str] | None = None,
                raw: str | None = None,
            ) -> None:
                data = (raw if raw is not None else json.dumps(payload)).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(
                        200,
                        {
                            "object": "list",
                            "data": [
                                {
                                    "id": "scripted",
                                    "object": "model",
                                    "created": 0,
                                    "owned_by": "test",
                                }
                            ],
                        },
                    )
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    self._send(400, {"error": {"message": "body is not JSON"}})
                    return
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                headers = {k.lower(): v for k, v in self.headers.items()}
                record = Received(self.path, headers, body, time.monotonic())
                with server._lock:
                    server.requests.append(record)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    reply = server._next(body)
                    if reply.delay_s > 0 and server._stop.wait(reply.delay_s):
                        return
                    self._answer(reply, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to answer
                finally:
                    with server._lock:
                        server.in_flight -= 1
                        record.finished = time.monotonic()

            def _answer(self, reply: Reply, body: dict) -> None:
                if reply.raw_body is not None:
                    self._send(reply.status, None, reply.headers, raw=reply.raw_body)
                    return
                if reply.status != 200:
                    self._send(
                        reply.status,
                        {
                            "error": {
                                "message": reply.error_message,
                                "type": "scripted_error",
                                "code": reply.status,
                            }
                        },
                        reply.headers,
                    )
                    return
                payload: dict[str, Any] = {
                    "id": f"chatcmpl-{len(server.requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "scripted"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply.content},
                            "finish_reason": reply.finish_reason,
                            "logprobs": None,
                        }
                    ],
                }
                if reply.prompt_tokens is not None and reply.completion_tokens is not None:
                    payload["usage"] = {
                        "prompt_tokens": reply.prompt_tokens,
                        "completion_tokens": reply.completion_tokens,
                        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
                    }
                self._send(200, payload, reply.headers)

        return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--script", help="JSON file: a list of objects with Reply's fields")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--default", help="content to answer with once the script is used up")
    args = parser.parse_args(argv)
    script = []
    if args.script:
        with open(args.script, encoding="utf-8") as handle:
            script = [Reply(**item) for item in json.load(handle)]
    default = ok(args.default) if args.default is not None else None
    with ChatServer(script, port=args.port, default=default) as server:
        print(f"serving {len(script)} scripted replies at {server.base_url}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
