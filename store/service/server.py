"""How `soe serve` runs the app: uvicorn, with read timeouts on request headers and bodies.

uvicorn's ``timeout_keep_alive`` only covers an idle connection between requests: a client that sends
half its headers, or ``Content-Length: 100`` and then 10 bytes, holds a connection (and, for a body,
a request) forever. Two limits close such connections:

* ``serve.header_timeout_s``: from a request's first byte (or the connection's opening) to the end of
  its headers. A subclass of uvicorn's HTTP protocol (httptools, else h11, as uvicorn's ``auto``)
  arms a timer and closes the transport when it fires.
* ``serve.body_timeout_s``: from the start of a request to the end of its body. `BodyReadTimeout`, an
  ASGI middleware (`store.service.app` installs it), waits for each body chunk with
  ``asyncio.wait_for`` until that deadline; past it the client gets ``408`` with
  ``Connection: close`` and the server closes the connection. Once the body is complete nothing is
  timed (a long lookalike is not a slow client).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

from store.service.settings import ServeSettings

HttpImpl = Literal["auto", "h11", "httptools"]


class BodyReadTimeout:
    """ASGI middleware: a request body must arrive within ``timeout_s`` of the request's start."""

    def __init__(self, app: Any, timeout_s: float):
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.timeout_s <= 0:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        state = {"body_done": False, "started": False, "timed_out": False}

        async def timed_receive() -> dict:
            if state["body_done"] or state["timed_out"]:
                return await receive() if not state["timed_out"] else {"type": "http.disconnect"}
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except TimeoutError:
                state["timed_out"] = True
                if not state["started"]:
                    await _reply_408(send, self.timeout_s)
                return {"type": "http.disconnect"}  # the app stops reading; its own answer is dropped
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["body_done"] = True
            return message

        async def tracked_send(message: dict) -> None:
            if state["timed_out"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        await self.app(scope, timed_receive, tracked_send)


async def _reply_408(send: Any, timeout_s: float) -> None:
    body = json.dumps({"detail": f"the request body did not arrive within {timeout_s:g} s"}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 408, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _HeaderTimer:
    """The timer both protocol subclasses share: armed while a request's headers are incomplete."""

    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    def _arm_header_timer(self) -> None:
        if self._header_timer is None and self.header_timeout_s > 0:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def _h11_protocol() -> type:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class H11WithHeaderTimeout(_HeaderTimer, H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:  # bytes of a request whose headers are not complete
                self._arm_header_timer()
            else:
                self._disarm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # a pipelined request's partial headers that arrived with the previous request
            if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
                self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

    return H11WithHeaderTimeout


def _httptools_protocol() -> type:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HttpToolsWithHeaderTimeout(_HeaderTimer, HttpToolsProtocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm_header_timer()

        def on_headers_complete(self) -> None:
            self._disarm_header_timer()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

    return HttpToolsWithHeaderTimeout


def protocol_class(http: HttpImpl, header_timeout_s: float) -> type:
    """uvicorn's HTTP protocol (``auto``: httptools when installed, else h11) with the header timeout."""
    if http == "auto":
        try:
            import httptools  # noqa: F401

            http = "httptools"
        except ImportError:
            http = "h11"
    base = _httptools_protocol() if http == "httptools" else _h11_protocol()
    return type(base.__name__, (base,), {"header_timeout_s": float(header_timeout_s)})


def make_server(
    app: Any,
    serve: ServeSettings,
    *,
    host: str | None = None,
    port: int | None = None,
    log_level: str = "info",
) -> Any:
    """The uvicorn server `soe serve` runs (``.run()``; tests run it in a thread)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host or serve.host,
        port=port or serve.port,
        log_level=log_level,
        http=protocol_class(serve.http, serve.header_timeout_s),
        timeout_keep_alive=serve.keep_alive_s,
    )
    return uvicorn.Server(config)
