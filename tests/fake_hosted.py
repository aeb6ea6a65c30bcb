"""A real HTTP server on 127.0.0.1 (aiohttp, in a thread) that plays a hosted model.

``/v1/chat/completions`` (OpenAI-compatible) and ``/v1alpha1/comments:analyze`` (Perspective)
answer by markers in the post text, so a test scripts failures per post:
``RATE429`` (429 with Retry-After once), ``ERR500`` (500 twice), ``SLOW`` (slower than the
client's timeout once), ``BADJSON`` (malformed answer, always), ``OUTOFSET`` (a label outside
the choices, always), ``ECHO`` (200 with a body that echoes the request: its URL and
headers, the key included), ``FOREVER429`` (429 with ``Retry-After: 1e9``, always).
``unauthorized=True`` answers 401 to everything. Every request's time is recorded (per post
text too) so a test can check the rate and the waits the server saw.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter

KEY = "sk-test-SECRET-0123456789abcdef"


def chat_classifier(server: "FakeHosted", **params: object) -> object:
    """An ``openai_chat`` classifier against ``server`` (JSON answers, choices 1/0, a short
    timeout); ``params`` override."""
    from classifiers.registry import build_classifier

    base = dict(base_url=server.base_url, model="tiny", api_key_env="TEST_LLM_KEY",
                template="Is this post about relations between groups? Post: {text} Answer "
                "with JSON.", choices={1: "1", 0: "0"}, json_mode=True, timeout_s=1.0,
                max_retries=4, max_concurrency=8)
    return build_classifier("openai_chat", {**base, **params})


class FakeHosted:
    def __init__(self, latency_s: float = 0.0, slow_s: float = 3.0,
                 unauthorized: bool = False) -> None:
        self.latency_s = latency_s
        self.slow_s = slow_s
        self.unauthorized = unauthorized
        self.seen: Counter = Counter()
        self.times: list[float] = []
        self.times_by_text: dict[str, list[float]] = {}
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "FakeHosted":
        self._thread.start()
        assert self._ready.wait(30), "fake server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def perspective_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1alpha1"

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1alpha1/comments:analyze", self._analyze)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    async def _scripted(self, text: str, request=None):
        """A failure response for this request, or None to answer normally."""
        from aiohttp import web

        now = time.monotonic()
        self.times.append(now)
        self.times_by_text.setdefault(text, []).append(now)
        self.seen[text] += 1
        n = self.seen[text]
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if self.unauthorized:
            return web.json_response({"error": {"message": "invalid key"}}, status=401)
        if "ECHO" in text and request is not None:  # a misbehaving server quoting the request
            return web.json_response({"you_sent": {
                "authorization": request.headers.get("Authorization"), "url": str(request.url),
                "headers": dict(request.headers)}})
        if "FOREVER429" in text:
            return web.json_response({"error": "rate limited"}, status=429,
                                     headers={"Retry-After": "1e9"})
        if "RATE429" in text and n == 1:
            return web.json_response({"error": "slow down"}, status=429,
                                     headers={"Retry-After": "1"})
        if "ERR500" in text and n <= 2:
            return web.json_response({"error": "boom"}, status=500)
        if "SLOW" in text and n == 1:
            await asyncio.sleep(self.slow_s)
        return None

    async def _chat(self, request):
        from aiohttp import web

        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return web.json_response({"error": "bad key"}, status=401)
        body = await request.json()
        text = body["messages"][-1]["content"]
        failed = await self._scripted(text, request)
        if failed is not None:
            return failed
        if "BADJSON" in text:
            answer = "label: one, I think"
        elif "OUTOFSET" in text:
            answer = json.dumps({"label": 7})
        elif "fields" in body.get("metadata", {}) or "sociopolitical" in text.lower():
            post = text.split("Post:")[-1]
            answer = json.dumps({"is_sociopolitical": int("vote" in post),
                                 "political_ideology_label": "left" if "vote" in post
                                 else "unclear"})
        else:  # the post is what follows "Post:" in the prompt
            answer = json.dumps({"label": int("group" in text.split("Post:")[-1])})
        return web.json_response({
            "id": "x", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(text) // 4, "completion_tokens": 3}})

    async def _analyze(self, request):
        from aiohttp import web

        if request.query.get("key") != KEY:
            return web.json_response({"error": "bad key"}, status=403)
        body = await request.json()
        text = body["comment"]["text"]
        failed = await self._scripted(text, request)
        if failed is not None:
            return failed
        if "BADJSON" in text:
            return web.Response(text="{not json", content_type="application/json")
        score = (len(text) % 10) / 10
        return web.json_response({"attributeScores": {
            a: {"summaryScore": {"value": score, "type": "PROBABILITY"}}
            for a in body["requestedAttributes"]}, "languages": body["languages"]})


if __name__ == "__main__":  # a server in its own process (benchmarks): prints its port
    import sys

    with FakeHosted(latency_s=float(sys.argv[1]) if len(sys.argv) > 1 else 0.0) as srv:
        print(srv.port, flush=True)
        sys.stdin.read()  # until the parent closes our stdin
