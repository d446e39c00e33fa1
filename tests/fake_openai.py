"""A local OpenAI-compatible chat server for tests: answers through a callback and misbehaves on purpose.

    with FakeOpenAIServer(reply=lambda messages, body: "3", fault_rate=0.3) as srv:
        client = LLMClient(srv.base_url, "fake")
        ...
        srv.requests        # request bodies received, in arrival order (faulted ones included)
        srv.fault_counts    # Counter of the faults served, e.g. {"429": 4, "drop": 2}

POST {base_url}/chat/completions answers `reply(messages, body)` as the assistant message, with `usage`
(whitespace-split word counts) and, when the server was built with logprobs=True and the request asks for
them, `logprobs` in the OpenAI format. `reply` may return a str, or (str, {token: logprob}) to choose the
top_logprobs of the first token (default: the first whitespace-split token with logprob 0.0).
With probability `fault_rate` a request gets one of `faults` instead (drawn from a seeded RNG):
  "429"      status 429 with Retry-After: 0
  "500"      status 500
  "garbage"  status 200 with a body that is not JSON
  "slow"     sleeps `slow_seconds`, then answers normally (a client whose timeout is shorter sees a timeout)
  "drop"     closes the connection without answering
`reply` may also raise HTTPError(status, message) to answer with that error (e.g. 400 for a prompt too long).
Only 127.0.0.1, on a free port; it stops when the `with` block ends.

For the CLIs' tests of a dead server and of Ctrl-C: `closed_port_url()` is a base URL nothing listens on, and
`interrupt_after(proc, srv, n)` sends Ctrl-C once the server has seen n requests and times the exit.
"""
import json
import random
import signal
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("429", "500", "garbage", "slow", "drop")


def closed_port_url():
    """The base URL of a port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def interrupt_after(proc, srv, n_requests, wait=60):
    """Ctrl-C (SIGINT) to the subprocess proc once srv has received n_requests; returns (seconds from the signal
    to its exit, stdout, stderr)."""
    deadline = time.time() + wait
    while time.time() < deadline and len(srv.requests) < n_requests:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    t0 = time.time()
    stdout, stderr = proc.communicate(timeout=30)
    return time.time() - t0, stdout, stderr


class HTTPError(Exception):
    """Raised by a reply callback to make the server answer `status` with an OpenAI-style error body."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


class FakeOpenAIServer:
    def __init__(self, reply, fault_rate=0.0, faults=FAULTS, seed=0, slow_seconds=2.0, logprobs=False):
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
        self.reply = reply
        self.fault_rate = fault_rate
        self.faults = tuple(faults)
        self.slow_seconds = slow_seconds
        self.logprobs = logprobs
        self.requests = []              # request bodies (dicts; the raw text when it was not JSON)
        self.headers = []               # request headers (dicts), to check what a client sends
        self.fault_counts = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._httpd = None
        self._thread = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"   # keep-alive, as real servers do, so "drop" hits a pooled connection

            def log_message(self, *args):   # quiet
                pass

            def do_POST(self):
                server._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def base_url(self):
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    # ------------------------------------------------------------------ one request
    def _handle(self, h):
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length).decode("utf-8", "replace")
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw
        with self._lock:
            self.requests.append(body)
            self.headers.append(dict(h.headers))
            fault = self._rng.choice(self.faults) if self.faults and self._rng.random() < self.fault_rate else None
            if fault:
                self.fault_counts[fault] += 1
        if h.path.rstrip("/") != "/v1/chat/completions":
            return self._send(h, 404, {"error": {"message": f"no route {h.path}"}})
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return self._send(h, 400, {"error": {"message": "body must be JSON with a messages list"}})
        if fault == "429":
            return self._send(h, 429, {"error": {"message": "rate limited"}}, extra_headers={"Retry-After": "0"})
        if fault == "500":
            return self._send(h, 500, {"error": {"message": "internal error"}})
        if fault == "garbage":
            return self._send_raw(h, 200, b"<html>upstream hiccup", "text/html")
        if fault == "drop":
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if fault == "slow":
            time.sleep(self.slow_seconds)
        try:
            payload = self._completion(body)
        except HTTPError as e:
            return self._send(h, e.status, {"error": {"message": e.message}})
        except Exception as e:  # a bug in the test's reply callback: answer 500 so the test sees it
            return self._send(h, 500, {"error": {"message": f"reply callback failed: {e!r}"}})
        self._send(h, 200, payload)

    def _completion(self, body):
        messages = body["messages"]
        choices, completion_tokens = [], 0
        for i in range(max(1, int(body.get("n") or 1))):
            out = self.reply(messages, body)
            content, top = (out if isinstance(out, tuple) else (out, None))
            choice = {"index": i, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            if self.logprobs and body.get("logprobs"):
                choice["logprobs"] = {"content": _logprobs(content, top, int(body.get("top_logprobs") or 0))}
            choices.append(choice)
            completion_tokens += len(content.split())
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        return {
            "id": f"chatcmpl-fake-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    @staticmethod
    def _send(h, status, obj, extra_headers=None):
        FakeOpenAIServer._send_raw(h, status, json.dumps(obj).encode(), "application/json", extra_headers)

    @staticmethod
    def _send_raw(h, status, data, ctype, extra_headers=None):
        try:
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(data)))
            for k, v in (extra_headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except OSError:  # the client gave up (timeout) and closed the socket: nothing to do
            h.close_connection = True


def _logprobs(content, top, n_top):
    """OpenAI-style per-token logprobs of `content`, split on whitespace (a stand-in for real tokens)."""
    tokens = content.split() or [""]
    entries = []
    for j, tok in enumerate(tokens):
        alts = top if (j == 0 and top) else {tok: 0.0}
        best = max(alts, key=alts.get)
        entries.append({
            "token": tok if j else best,
            "logprob": alts.get(tok, 0.0) if j else alts[best],
            "top_logprobs": [{"token": t, "logprob": lp} for t, lp in
                             sorted(alts.items(), key=lambda kv: -kv[1])[:max(n_top, 1)]],
        })
    return entries
