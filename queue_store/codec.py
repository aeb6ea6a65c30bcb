"""JSON encoding for queue payloads: strict JSON, never pickle.

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


def merge_objects(first: str, second: str) -> str:
    """Concatenate two encoded JSON objects with disjoint keys into one, without decoding."""
    if len(second) <= 2:  # "{}"
        return first
    if len(first) <= 2:
        return second
    return f"{first[:-1]},{second[1:]}"


def join_lines(objects: list[str]) -> str:
    """A JSON array with one element per line.

    Encoded JSON never holds a raw newline (it is escaped inside strings), so the array's body
    turns into newline-delimited JSON by one replace (``ndjson_body``): Arrow's JSON reader then
    parses whole export chunks in C++.
    """
    return "[" + ",\n".join(objects) + "]"


def ndjson_body(array_text: str) -> str:
    """The elements of a ``join_lines`` array as newline-delimited JSON (no decoding)."""
    return array_text[1:-1].replace(",\n", "\n")
