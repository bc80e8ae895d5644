"""One HTTP call to a node or its token endpoint, retried only where trying again can help: 429 and 503
(waiting what `Retry-After` asks) and connection failures (exponential backoff with jitter), at most
`retries` times and never past the node's deadline. Anything else is the answer."""

from __future__ import annotations

import datetime
import email.utils
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import tenacity

#: Answers that say "not now": the same request may well succeed later.
RETRY_STATUSES = frozenset({429, 503})
#: The connection failed or dropped before an answer: the request never reached the node's search.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (httpx.NetworkError, httpx.ConnectTimeout, httpx.RemoteProtocolError)

_backoff = tenacity.wait_exponential_jitter(multiplier=0.25, max=5.0, jitter=0.25)


class Failure(Exception):
    """Why a node gave no usable answer: `reason` goes into the report, `status` is the HTTP status of the
    answer that decided it (None when there was none)."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class Busy(Exception):
    """A 429 or 503 answer, raised so that tenacity retries it; `send` turns the last one into a Failure."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait by the answer's Retry-After (delay-seconds or an HTTP date), None without one."""
    value = response.headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())


def _wait(state: tenacity.RetryCallState) -> float:
    error = state.outcome.exception() if state.outcome else None
    if isinstance(error, Busy) and (after := retry_after(error.response)) is not None:
        return after
    return _backoff(state)


async def send(request: Callable[[float], Awaitable[httpx.Response]], deadline: float, retries: int) -> httpx.Response:
    """`request(timeout)`, again while it answers 429/503 or cannot connect, up to `retries` more times and only
    while the next try could start before `deadline` (time.monotonic()). Raises a Failure (still busy) or the
    connection error of the last try when giving up."""
    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(retries + 1) | tenacity.stop_before_delay(deadline - time.monotonic()),
        wait=_wait,
        retry=tenacity.retry_if_exception_type((Busy, *CONNECTION_ERRORS)),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                response = await request(max(deadline - time.monotonic(), 0.001))
                if response.status_code in RETRY_STATUSES:
                    raise Busy(response)
    except Busy as busy:
        status, after = busy.response.status_code, busy.response.headers.get("retry-after")
        wait = f" (Retry-After: {after})" if after else ""
        raise Failure(f"HTTP {status}{wait}: still refused when giving up", status) from None
    return response


def json_body(response: httpx.Response) -> Any:
    """The answer's JSON, or None when it is not JSON."""
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None


def why(response: httpx.Response) -> str:
    """`HTTP 403: <what the OperationOutcome or OAuth error says>`, for the report."""
    body = json_body(response)
    said = ""
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        issues = body.get("issue") if isinstance(body.get("issue"), list) else []
        said = "; ".join(str(i.get("diagnostics") or i.get("code")) for i in issues if isinstance(i, dict))
    elif isinstance(body, dict) and "error" in body:
        said = " ".join(str(body[k]) for k in ("error", "error_description") if body.get(k))
    elif body is None and response.content:
        said = response.text[:200].strip()
    return f"HTTP {response.status_code}" + (f": {said}" if said else "")
