"""Calling a hosted model from a (synchronous) classifier: concurrency, budgets, retries.

Each hosted classifier owns one ``HostedCaller``: an asyncio loop on a background thread with
one ``aiohttp`` session, so ``classify`` (called synchronously by the pipeline's actor) runs up
to ``max_concurrency`` requests at once without touching any other event loop. Budgets are
leaky buckets (``aiolimiter``) sized so that no burst exceeds them: requests per minute or per
second, and tokens per minute (estimated before the request). Retries (``tenacity``):
exponential backoff with jitter, or the server's ``Retry-After``, on 429, 5xx, timeouts and
connection errors, up to ``max_retries``; every wait is capped at ``max_retry_wait_s`` and a
post gives up once its retries have taken ``retry_budget_s`` in all (a server asking for
``Retry-After: 1e9`` fails the post, it does not stall the run); any other 4xx fails that post
only; 401/403 raise ``FatalClassifierError`` — the run stops, no post is failed. ``status()``
says what the caller is waiting on (a rate limit, a server that does not answer), for the
progress display.

Error texts never hold the request URL (a Perspective key travels in it) or any header, and
every reason passes ``scrub``.
"""
from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from typing import Any, Awaitable, Callable, Sequence
from urllib.parse import urlparse

import orjson

from classifiers.params import HostedParams
from classifiers.protocol import FatalClassifierError, PostFailure
from classifiers.scrub import register_secret, scrub

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class RetryableError(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestFailed(Exception):
    """This request will not succeed (a 4xx, or retries used up): its post fails."""


def api_key(env_name: str, what: str) -> str:
    """The key from the environment; a missing one is a config error naming the variable."""
    value = os.environ.get(env_name, "")
    if not value:
        raise ValueError(f"{what} needs an API key in the environment variable {env_name}; "
                         f"export {env_name}=... (the key never goes in the config)")
    register_secret(value)
    return value


def check_url(url: str, name: str = "base_url") -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"{name} {url!r} is not an http(s) URL")
    return url.rstrip("/")


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


class HostedCaller:
    """One hosted classifier's calls: ``params`` (``HostedParams``) sets concurrency, retries
    and waits; the budgets are per minute/second of requests and per minute of tokens."""

    def __init__(self, params: HostedParams, key_env: str, secret: str,
                 requests_per_minute: float | None = None,
                 requests_per_second: float | None = None,
                 tokens_per_minute: float | None = None) -> None:
        self.max_concurrency = params.max_concurrency
        self.max_retries = params.max_retries
        self.timeout_s = params.timeout_s
        self.max_retry_wait_s = params.max_retry_wait_s
        self.retry_budget_s = params.retry_budget_s
        self.key_env = key_env
        register_secret(secret)  # scrubbed from every failure reason
        self.stats = {"requests_ok": 0, "requests_retried": 0, "requests_failed": 0,
                      "prompt_tokens": 0, "completion_tokens": 0}
        self._waiting: dict[str, Any] = {}  # what the caller waits on now (see status())
        self._reported = dict(self.stats)
        self._lock = threading.Lock()
        self._rates = (requests_per_minute, requests_per_second, tokens_per_minute)
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        self._setup = self._submit(self._open())

    async def _open(self) -> None:
        import aiohttp
        from aiolimiter import AsyncLimiter

        rpm, rps, tpm = self._rates
        # One request per interval: a bucket of one never bursts above the budget.
        per_request = 60.0 / rpm if rpm else (1.0 / rps if rps else None)
        self._requests = AsyncLimiter(1, per_request) if per_request else None
        self._tokens = AsyncLimiter(tpm / 60.0, 1.0) if tpm else None
        self._timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        self._slots = asyncio.Semaphore(self.max_concurrency)

    def _submit(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def map(self, fn: Callable[[Any], Awaitable[Any]], items: Sequence[Any]) -> list[Any]:
        """Run ``fn`` on every item concurrently; exceptions come back in the item's place
        (a ``FatalClassifierError`` is raised instead)."""
        import aiohttp

        async def all_of() -> list[Any]:
            # One session per call: pooled connections within it, nothing left open after.
            connector = aiohttp.TCPConnector(limit=self.max_concurrency)
            async with aiohttp.ClientSession(timeout=self._timeout,
                                             connector=connector) as self._session:
                return await asyncio.gather(*(fn(x) for x in items), return_exceptions=True)

        results = self._submit(all_of())
        for r in results:
            if isinstance(r, FatalClassifierError):
                raise r
        return results

    def map_posts(self, fn: Callable[[str], Awaitable[Any]], texts: Sequence[str]
                  ) -> list[dict[str, Any] | PostFailure]:
        """``map`` for classifiers: each post's label columns, or a ``PostFailure`` whose
        reason never holds the key."""
        out: list[dict[str, Any] | PostFailure] = []
        for r in self.map(fn, texts):
            if isinstance(r, dict):
                out.append(r)
                continue
            if isinstance(r, PostFailure):
                out.append(PostFailure(reason=scrub(r.reason)[:500]))
                continue
            reason = str(r) if isinstance(r, RequestFailed) else f"{type(r).__name__}: {r}"
            out.append(PostFailure(reason=scrub(reason)[:500]))
        return out

    def status(self) -> dict[str, str]:
        """What the caller waits on right now: ``rate_limit`` (the server asked to wait) and
        ``last_error`` (the last retryable failure, within the last minute), scrubbed."""
        now = time.monotonic()
        with self._lock:
            out = {}
            until, asked = self._waiting.get("rate_limit", (0.0, 0.0))
            if until > now:
                out["rate_limit"] = (f"the server asked to wait {asked:g} s (HTTP 429); "
                                     f"waiting {until - now:.0f} s more")
            at, error = self._waiting.get("error", (0.0, ""))
            if error and now - at < 60:
                out["last_error"] = error
        return out

    async def post_json(self, url: str, payload: dict[str, Any], headers: dict[str, str],
                        tokens: int = 0, what: str = "request") -> dict[str, Any]:
        """POST with budgets and retries; the decoded JSON body of a 2xx answer."""
        body = orjson.dumps(payload)
        headers = {**headers, "Content-Type": "application/json"}
        started = time.monotonic()
        try:  # the common case costs one attempt and no retry machinery
            return await self._post_once(url, body, headers, tokens, what)
        except RetryableError as first:
            failure = first
        except RequestFailed:
            self._count("requests_failed")
            raise
        if self.max_retries == 0:
            self._count("requests_failed")
            raise RequestFailed(f"{what} failed and max_retries is 0: {failure}")
        return await self._retry(url, body, headers, tokens, what, failure, started)

    def _wait_for(self, failure: RetryableError, backoff_s: float, started: float
                  ) -> float | None:
        """Seconds to wait before the next try: the server's ``Retry-After`` or the backoff,
        capped at ``max_retry_wait_s``; None once the post's ``retry_budget_s`` is spent."""
        left = self.retry_budget_s - (time.monotonic() - started)
        wanted = failure.retry_after if failure.retry_after is not None else backoff_s
        wait = min(wanted, self.max_retry_wait_s)
        if wait >= left:
            return None
        if failure.retry_after is not None:
            with self._lock:
                self._waiting["rate_limit"] = (time.monotonic() + wait, failure.retry_after)
        return wait

    async def _retry(self, url: str, body: bytes, headers: dict[str, str], tokens: int,
                     what: str, failure: RetryableError, started: float) -> dict[str, Any]:
        from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

        # First retry: the server's Retry-After, or a short jittered pause; then tenacity's
        # exponential backoff with jitter (or Retry-After) between the further ones — each
        # wait capped, all of them within the post's retry budget.
        first = self._wait_for(failure, random.uniform(0.5, 1.0), started)
        if first is None:
            return self._give_up(what, failure, 0, started)
        await asyncio.sleep(first)
        backoff = wait_exponential_jitter(max=30.0, jitter=0.5)  # 1, 2, 4 ... s + jitter
        decided: dict[int, float | None] = {}  # per attempt, whichever of wait/stop asks first

        def decide(state: Any) -> float | None:
            if state.attempt_number not in decided:
                decided[state.attempt_number] = self._wait_for(state.outcome.exception(),
                                                               backoff(state), started)
            return decided[state.attempt_number]

        def wait(state: Any) -> float:
            return decide(state) or 0.0

        def stop(state: Any) -> bool:  # over the retry count, or over the post's budget
            return state.attempt_number >= self.max_retries or decide(state) is None

        tries = 0
        try:
            async for attempt in AsyncRetrying(
                    retry=retry_if_exception_type(RetryableError), wait=wait, stop=stop,
                    reraise=True):
                with attempt:
                    tries += 1
                    self._count("requests_retried")
                    return await self._post_once(url, body, headers, tokens, what)
        except RetryableError as exc:
            return self._give_up(what, exc, tries, started)
        except RequestFailed:
            self._count("requests_failed")
            raise
        raise AssertionError("unreachable")

    def _give_up(self, what: str, failure: RetryableError, tries: int,
                 started: float) -> dict[str, Any]:
        self._count("requests_failed")
        took = time.monotonic() - started
        hint = (f"; the server asked to wait {failure.retry_after:g} s (waits are capped at "
                f"max_retry_wait_s={self.max_retry_wait_s:g}, retry_budget_s="
                f"{self.retry_budget_s:g} per post)" if failure.retry_after is not None else "")
        raise RequestFailed(f"{what} failed after {tries} retr{'y' if tries == 1 else 'ies'} "
                            f"over {took:.0f} s: {failure}{hint}")

    async def _post_once(self, url: str, body: bytes, headers: dict[str, str],
                         tokens: int, what: str) -> dict[str, Any]:
        import aiohttp

        async with self._slots:
            if self._tokens is not None and tokens:
                await self._tokens.acquire(min(float(tokens), self._tokens.max_rate))
            if self._requests is not None:
                await self._requests.acquire()
            try:
                async with self._session.post(url, data=body, headers=headers) as resp:
                    answer = await resp.read()
                    status = resp.status
                    hint = _retry_after(resp.headers.get("Retry-After"))
            except asyncio.TimeoutError:
                raise self._noted(RetryableError(
                    f"{what} timed out after {self.timeout_s:g} s")) from None
            except aiohttp.ClientError as exc:
                raise self._noted(RetryableError(
                    f"{what}: connection error ({type(exc).__name__}: {exc})")) from None
        if status in (401, 403):
            raise FatalClassifierError(
                f"the hosted model refused the API key (HTTP {status}); check the environment "
                f"variable {self.key_env} (and that the key may use this model)")
        if status in RETRY_STATUS:
            raise self._noted(RetryableError(f"{what}: HTTP {status}", hint))
        if status >= 400:
            raise RequestFailed(f"{what}: HTTP {status}: "
                                f"{answer[:200].decode(errors='replace')}")
        try:
            data = orjson.loads(answer)
        except orjson.JSONDecodeError:
            raise RequestFailed(f"{what}: the answer is not JSON: "
                                f"{answer[:200].decode(errors='replace')!r}") from None
        self._count("requests_ok")
        return data

    def close(self) -> None:
        """Stop the loop's thread (also done when the classifier goes away)."""
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def _noted(self, exc: RetryableError) -> RetryableError:
        """Remember a retryable failure for ``status()`` (the progress display)."""
        with self._lock:
            self._waiting["error"] = (time.monotonic(), scrub(str(exc))[:300])
        return exc

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    def add_tokens(self, prompt: int, completion: int) -> None:
        self._count("prompt_tokens", prompt)
        self._count("completion_tokens", completion)

    def usage(self) -> dict[str, int]:
        """Counters since the last call."""
        with self._lock:
            delta = {k: v - self._reported[k] for k, v in self.stats.items()}
            self._reported = dict(self.stats)
        return {k: v for k, v in delta.items() if v}


class HostedClassifier:
    """What every hosted classifier shares: one request per post through its ``caller``
    (set in ``__init__``), in ``classify``; ``usage`` and ``status`` for the run's figures.
    A subclass writes ``_one`` (one post's request and answer)."""

    caller: HostedCaller

    def classify(self, texts: list[str]) -> list[dict[str, Any] | PostFailure]:
        return self.caller.map_posts(self._one, texts)

    def usage(self) -> dict[str, int]:
        return self.caller.usage()

    def status(self) -> dict[str, str]:
        return self.caller.status()

    async def _one(self, text: str) -> dict[str, Any] | PostFailure:
        raise NotImplementedError
