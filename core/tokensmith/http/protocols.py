"""Hypercorn's HTTP/1.1 and HTTP/2 protocols, refusing what tokensmith must not serve.

server.py drives Hypercorn's ``TCPServer`` per connection, and Hypercorn picks the protocol
class for it by name from its ``hypercorn.protocol`` module. ``install`` puts these two
subclasses there (Hypercorn is pinned to 0.18, where they were written and are tested):

- ``H11Protocol`` hands h11 the bytes of a read in slices (``_SLICE``), so that its size
  limits hold however the bytes arrived; and refuses, with 400 and a close, any request with
  an ``Upgrade`` field, and the HTTP/2 preface on an HTTP/1.1 connection. Hypercorn switches
  to HTTP/2 on ``Upgrade: h2c`` and on the preface even over TLS, where HTTP/2 is negotiated
  with ALPN only (RFC 9113 §3.2, §3.3). Behind a proxy that tunnels once it sees a 101
  answer, the switch lets a client speak past the proxy: it could send its own copy of the
  certificate header that the proxy would have replaced (h2c smuggling). RFC 9110 §7.8 lets
  a server refuse an upgrade. The llhttp lane refuses them alike.
- ``H11Protocol`` also drops the body messages a request's app did not read when the
  request ends (it was answered, or the client went) and they fill its queue. Hypercorn
  hands a body to the app through a queue of ten messages; after an early answer (405, 413)
  nobody reads it, and the connection's reader, putting more of the body, and the request's
  end, putting its disconnect, waited on each other for ever: one task and its buffers kept
  per connection, from a few bytes of chunked body. The connection then closes, as after any
  answer to an unfinished request; such an answer says so with ``Connection: close`` (RFC 9112
  §9.6), which Hypercorn left out, so that a client reusing the connection found it closed.
- ``H2Protocol`` resets only the offending stream, instead of losing the whole connection
  (and every other client's stream on it, behind a proxy that multiplexes), when a request
  has a ``:method`` or ``:path`` that is not ASCII, no ``:path``, or the CONNECT method
  (RFC 9113 §8.3.1: a malformed request is a stream error), and when DATA arrives for a
  stream that was already answered (RFC 9113 §8.1 allows answering before the request ends),
  even one answered while earlier events of the same read were being handled. When the
  connection closes, it ends the output buffers of its streams: Hypercorn stops the task
  that empties them, and an app that answers after the client went away (the fast lane
  answers every request it read) would otherwise wait on them for ever, task and memory
  kept, one per dropped connection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import ssl
from typing import Any

import h2.errors
import h2.events
import h2.exceptions
import h11
import hypercorn.protocol
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.events import Response
from hypercorn.protocol.h2 import H2Protocol as _HypercornH2
from hypercorn.protocol.h11 import H11Protocol as _HypercornH11

from tokensmith.metrics import metrics

__all__ = ["install", "H11Protocol", "H2Protocol"]

#: RFC 9110 §5.6.2 token, which every method is (§9.1).
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class UpgradeRefused(ConnectionAbortedError):
    """Raised after the 400 is sent: Hypercorn's TCPServer closes the connection quietly."""


#: The most bytes h11 is given at once. h11 refuses an event it cannot complete within its
#: buffer limit (431), but sees the limit only while the event is incomplete: a 40 KiB chunk
#: line or head that arrived in one read was accepted, the same bytes in two reads refused.
#: Fed in slices, an over-long one is refused however the bytes arrived, as on the llhttp lane.
_SLICE = 4096


def _discard_unread(stream: Any) -> None:
    """Empty *stream*'s queue of body messages for its app when it is full, as its request
    ends: a full queue holds whoever puts into it next (the reader, or the request's
    disconnect), and an app that has not read them by now is done with its request, or its
    client is gone. A queue with room is left alone: an app still running gets what arrived
    before its client went."""
    queue = getattr(getattr(stream, "app_put", None), "__self__", None)
    if isinstance(queue, asyncio.Queue) and queue.full():
        while not queue.empty():
            queue.get_nowait()


class H11Protocol(_HypercornH11):
    async def _close_stream(self) -> None:
        if self.stream is not None:
            _discard_unread(self.stream)
        await super()._close_stream()

    async def stream_send(self, event: StreamEvent) -> None:
        if (
            isinstance(event, Response)
            and event.status_code >= 200
            and self.connection.their_state is h11.SEND_BODY
            and not any(name.lower() == b"connection" for name, _ in event.headers)
        ):
            # Answered before the request's body was read to its end: Hypercorn closes the
            # connection after this answer rather than read the rest (RFC 9112 §9.3 allows
            # either). RFC 9112 §9.6: a server closing after a response says so in it, and a
            # client then sends its next request on a new connection.
            event = dataclasses.replace(event, headers=[*event.headers, (b"connection", b"close")])
        await super().stream_send(event)

    async def _maybe_recycle(self) -> None:
        try:
            await super()._maybe_recycle()
        except (ssl.SSLError, OSError):
            # Closing after an answer while the client is still sending: the TLS close fails
            # (APPLICATION_DATA_AFTER_CLOSE_NOTIFY), and the connection is over either way.
            pass

    async def handle(self, event: Event) -> None:
        if not isinstance(event, RawData) or len(event.data) <= _SLICE:
            await super().handle(event)
            return
        data = event.data
        for start in range(0, len(data), _SLICE):
            if self.connection.their_state in (h11.ERROR, h11.CLOSED):
                return  # refused (and answered) already: the rest is not read
            await super().handle(RawData(data[start : start + _SLICE]))

    async def _send_error_response(self, status_code: int) -> None:
        # A request h11 or Hypercorn refused before the app saw it, as the llhttp lane counts
        # its own refusals.
        metrics().answered_before_app(status_code)
        await super()._send_error_response(status_code)

    async def _check_protocol(self, event: h11.Request) -> None:
        preface = event.method == b"PRI" and event.target == b"*"
        if preface or any(name == b"upgrade" for name, _ in event.headers):
            await self._send_error_response(400)
            await self.send(Closed())
            raise UpgradeRefused("protocol upgrade refused")


class H2Protocol(_HypercornH2):
    async def handle(self, event: Event) -> None:
        await super().handle(event)
        if isinstance(event, Closed):
            # Nothing will send what is buffered: let every writer waiting on a buffer go.
            for buffer in list(self.stream_buffers.values()):
                await buffer.close()

    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        # One event at a time: handling one awaits the app, which may answer a stream (and
        # Hypercorn forget it) before the next event of the same read, its DATA, is handled.
        for event in events:
            if isinstance(event, h2.events.RequestReceived) and not _well_formed(event.headers):
                self.connection.reset_stream(event.stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
                await self._flush()
            elif isinstance(event, h2.events.DataReceived) and event.stream_id not in self.streams:
                # Answered already (or reset above): give the window back, drop the data.
                try:
                    self.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                except h2.exceptions.StreamClosedError:
                    pass
                await self._flush()
            else:
                await super()._handle_events([event])


def _well_formed(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request's pseudo-header fields are ones Hypercorn can turn into a scope."""
    method = path = None
    for name, value in headers:
        if name == b":method":
            method = value
        elif name == b":path":
            path = value
    return (
        method is not None
        and method != b"CONNECT"
        and _TOKEN.fullmatch(method) is not None
        and path is not None
        and path.isascii()
    )


def install() -> None:
    """Make Hypercorn's connections use these protocols (idempotent)."""
    current = hypercorn.protocol.H11Protocol, hypercorn.protocol.H2Protocol
    if current == (H11Protocol, H2Protocol):
        return
    if current != (_HypercornH11, _HypercornH2):
        raise RuntimeError("hypercorn.protocol's protocol classes are not Hypercorn's own")
    hypercorn.protocol.H11Protocol = H11Protocol  # type: ignore[misc]
    hypercorn.protocol.H2Protocol = H2Protocol  # type: ignore[misc]
