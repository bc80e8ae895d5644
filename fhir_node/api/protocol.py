"""uvicorn's httptools protocol with the two bounds it lacks on a request's head: its size (431; a 16 MB
header was accepted) and the time to send it (408, then the connection closes; a client trickling a head
keeps a connection open for nothing). The body has its deadline in `edge.Edge`. And an answer's head and
body leave in one write (`_Coalescing`)."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_LINGER_SECONDS = 0.5
#: Bytes a coalescing transport holds at most before writing them (see `_Coalescing`).
_FLUSH_BYTES = 256 * 1024


class _Coalescing:
    """A transport whose writes made in one turn of the event loop leave as one write at its end: uvicorn
    writes an answer's head and its body apart, two system calls where one does (measured: ~11 % of a
    search's CPU, 603 -> 535 µs). Past `_FLUSH_BYTES` waiting (a streamed body), it writes at once.
    Everything but writing and closing is the transport's own."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._parts: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        if not self._parts:
            self._loop.call_soon(self._flush)
        self._parts.append(data)
        self._size += len(data)
        if self._size >= _FLUSH_BYTES:
            self._flush()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def _flush(self) -> None:
        parts, self._parts, self._size = self._parts, [], 0
        if parts and not self._transport.is_closing():
            self._transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class BoundedHead(HttpToolsProtocol):
    """`head_limit` bytes and `head_timeout` seconds for the request line and headers."""

    def __init__(self, *args: Any, head_limit: int, head_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_limit = head_limit
        self.head_timeout = head_timeout
        self._in_head = True
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _Coalescing(transport, self.loop)  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        in_head = self._in_head
        super().data_received(data)
        # Still in a head: `data` belongs to it. A read ending one request and starting the next is not
        # counted (the bound is loose by one read); a body is counted only in one pipelined after it.
        if in_head and self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.head_limit:
                self._refuse(431, "Request header fields too large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0
        self._head_timer = self.loop.call_later(self.head_timeout, self._refuse, 408, "Request head too slow")

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _refuse(self, status: int, reason: str) -> None:
        """Answer and close; reading stops first and the close waits a little, so the client (still
        sending) gets the answer rather than a connection reset."""
        if self.transport.is_closing() or self._refused:
            return
        self._refused = True
        self.logger.info("%s: %s", reason, self.client)
        body = reason.encode()
        self.transport.write(
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        self.transport.pause_reading()
        self.loop.call_later(_LINGER_SECONDS, self.transport.close)
