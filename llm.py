"""
A small client for any OpenAI-compatible /v1/chat/completions server (OpenAI, vLLM, llama.cpp,
Ollama): the LLM that judges files in filter.py (§2.1) and writes textbooks and exercises in
synth.py (§2.2). The paper used GPT-4 for the labels and GPT-3.5 for the synthetic data; any server
that speaks this protocol stands in.

    client = LLMClient("http://127.0.0.1:8080/v1", "gpt-3.5-turbo", concurrency=8)
    resp = client.chat([{"role": "user", "content": "Hi"}], max_tokens=8)
    # `concurrency` requests in flight, results as they finish
    for item, result in client.map(ask, items): ...

The API key is read from OPENAI_API_KEY and only ever put in the Authorization header.
`./serve_llm.sh` starts a local llama.cpp server for offline runs.
"""

import os
import queue
import random
import threading
import time

import requests
import urllib3

from configurator import RunError

class LLMError(RunError):
    """A request that still failed after all retries, or that retrying cannot fix
    (e.g. 400, 401)."""


class ServerUnreachable(LLMError):
    """Not one request has reached the server (refused, unknown host, connect timeout): a wrong URL
    or a server that is not running, which no retry fixes. Fatal for the whole run, not one item's
    failure."""


class LLMClient:
    """Thread-safe chat-completions client with retries.

    Retries with exponential backoff and full jitter on 429, 5xx, timeouts, dropped connections and
    bodies that are not a JSON completion; honours Retry-After. Other 4xx fail at once. The API key
    is read from the OPENAI_API_KEY environment variable and only ever put in the Authorization
    header."""

    RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}

    def __init__(self, base_url, model, concurrency=8, timeout=60.0, max_retries=6, backoff=0.5,
                 max_backoff=30.0):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}
        self.stats = {"requests": 0, "retries": 0}
        self._lock = threading.Lock()
        # one requests.Session per thread: Session is not thread-safe
        self._local = threading.local()
        self._rng = random.Random()
        # has any request had an HTTP answer? until then, refused = fatal
        self.reached = False

    def _session(self):
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
            key = os.environ.get("OPENAI_API_KEY")
            if key:
                s.headers["Authorization"] = f"Bearer {key}"
        return s

    def chat(self, messages, **params):
        """POST one chat completion; returns the response JSON (a dict with "choices")."""
        body = {"model": self.model, "messages": messages, **params}
        url = f"{self.base_url}/chat/completions"
        problem, retry_after = None, None
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._lock:
                    self.stats["retries"] += 1
                delay = (min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                         * self._rng.random())
                time.sleep(max(delay, retry_after or 0.0))
            retry_after = None
            with self._lock:
                self.stats["requests"] += 1
            try:
                r = self._session().post(url, json=body, timeout=self.timeout)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
                self._local.session.close()  # its pooled connection may be dead; start afresh
                self._local.session = None
                cause = getattr(e.args[0] if e.args else None, "reason", None)
                if not self.reached and isinstance(cause, urllib3.exceptions.ConnectTimeoutError):
                    raise ServerUnreachable(f"cannot connect to {self.base_url} "
                                            f"({type(cause).__name__}): is the server running, "
                                            "and is --base_url right?") from None
                problem = f"connection error ({type(e).__name__})"
                continue
            except requests.Timeout:
                problem = f"timed out after {self.timeout:g} s"
                continue
            self.reached = True
            if r.status_code in self.RETRY_STATUS:
                problem = f"HTTP {r.status_code}"
                retry_after = _retry_after_seconds(r.headers.get("Retry-After"), self.max_backoff)
                continue
            if r.status_code != 200:
                raise LLMError(f"HTTP {r.status_code} from {url}: {r.text[:200]}")
            try:
                resp = r.json()
                resp["choices"][0]["message"]
            except (ValueError, KeyError, IndexError, TypeError):
                problem = f"response is not a chat completion: {r.text[:80]!r}"
                continue
            usage = resp.get("usage") or {}
            with self._lock:
                for k in ("prompt_tokens", "completion_tokens"):
                    self.usage[k] += int(usage.get(k) or 0)
            return resp
        raise LLMError(f"{url}: gave up after {self.max_retries + 1} attempts; last: {problem}")

    def map(self, fn, items):
        """Run fn(item) on `concurrency` threads; yield (item, result or the exception raised) as
        each finishes.

        Items are handed out a few at a time, so `items` can be a long generator, and a new request
        starts as soon as any finishes. The threads are daemons: on Ctrl-C the caller stops at once
        and a request still waiting on a slow server is abandoned, not waited for
        (ThreadPoolExecutor joins its threads at exit)."""
        items, todo, done, stop = iter(items), queue.Queue(), queue.Queue(), object()

        def worker():
            while (item := todo.get()) is not stop:
                try:
                    done.put((item, fn(item)))
                except Exception as e:  # noqa: BLE001 -- handed to the caller, which decides
                    done.put((item, e))

        for _ in range(self.concurrency):
            threading.Thread(target=worker, daemon=True).start()
        pending = 0
        try:
            for item in items:
                todo.put(item)
                pending += 1
                if pending == 2 * self.concurrency:
                    yield self._result(done.get())
                    pending -= 1
            for _ in range(pending):
                yield self._result(done.get())
        finally:
            # also when the caller stops early: queued items are dropped, running ones
            # end on their own
            try:
                while True:
                    todo.get_nowait()
            except queue.Empty:
                pass
            for _ in range(self.concurrency):
                todo.put(stop)

    @staticmethod
    def _result(item_and_result):
        if isinstance(item_and_result[1], ServerUnreachable):
            raise item_and_result[1]
        return item_and_result


def _retry_after_seconds(value, cap):
    try:
        return min(cap, max(0.0, float(value)))
    except (TypeError, ValueError):
        return None
