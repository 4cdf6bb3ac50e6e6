"""Real receivers of result notifications for tests, on loopback ports.

``MLLPListener``: an HL7 v2 MLLP server built on the ``hl7`` package's asyncio stream server
(``hl7.mllp.start_hl7_server``) in its own thread; it keeps every message it receives and
answers each with an ACK whose code the test chooses (``AA`` by default).
``FHIRListener``: a ``http.server`` (HTTPS with an ``ssl_context``) that keeps every POSTed
body and answers a chosen status.
"""

from __future__ import annotations

import asyncio
import http.server
import ssl
import threading
from typing import Any

import hl7
from helpers import free_port
from hl7.mllp import start_hl7_server


class MLLPListener:
    def __init__(self, port: int | None = None, ack_code: str = "AA") -> None:
        self.port = port or free_port()
        self.ack_code = ack_code
        self.messages: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    async def _client(self, reader: Any, writer: Any) -> None:
        try:
            while not writer.is_closing():
                message: hl7.Message = await reader.readmessage()
                self.messages.append(str(message))
                writer.writemessage(message.create_ack(self.ack_code))
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._stop = asyncio.Event()
        async with await start_hl7_server(self._client, "127.0.0.1", self.port) as server:
            ready.set()
            await self._stop.wait()
            server.close()

    def start(self) -> MLLPListener:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(self._serve(ready),), daemon=True
        )
        self._thread.start()
        assert ready.wait(10), "MLLP listener did not start"
        return self

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(10)

    def __enter__(self) -> MLLPListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FHIRListener:
    def __init__(
        self, port: int | None = None, status: int = 201, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.port = port or free_port()
        self.status = status
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        scheme = "https" if ssl_context else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}/fhir"
        listener = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                listener.posts.append((self.path, dict(self.headers), body))
                self.send_response(listener.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if ssl_context is not None:
            self.server.socket = ssl_context.wrap_socket(self.server.socket, server_side=True)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FHIRListener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
