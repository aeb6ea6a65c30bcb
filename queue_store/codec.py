"""How a queued batch's posts are stored: a JSON array of post objects (strict JSON, never
pickle). Output rows are typed Arrow IPC streams instead (``rows/typed.py``).

orjson writes standard JSON only (it never emits the non-standard NaN/Infinity tokens that
``json.dumps(allow_nan=True)`` would), which is the guarantee ``allow_nan=False`` exists for.
"""
from __future__ import annotations

from typing import Any

import orjson


class PayloadError(ValueError):
    """A stored payload that cannot be decoded into the expected shape."""


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def loads(raw: str | bytes) -> Any:
    """Decode JSON; any malformed or pathologically nested input raises ``PayloadError``."""
    try:
        return orjson.loads(raw)
    except (orjson.JSONDecodeError, RecursionError, TypeError) as exc:
        raise PayloadError(f"undecodable JSON: {exc}") from exc


def loads_posts(raw: str | bytes) -> list[dict]:
    """Decode a batch payload and check it is a list of posts with string ``uri``s."""
    posts = loads(raw)
    if not isinstance(posts, list):
        raise PayloadError(f"payload is {type(posts).__name__}, expected a list of posts")
    for i, post in enumerate(posts):
        if not isinstance(post, dict) or not isinstance(post.get("uri"), str):
            raise PayloadError(f"post {i} is not an object with a string 'uri'")
    return posts
