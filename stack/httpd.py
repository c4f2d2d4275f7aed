"""A small HTTP/1.1 server on loopback, on a thread of its own, for the dev
stack's side doors (the map page; the dev login could share it)."""

from __future__ import annotations

import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def send(
    handler: BaseHTTPRequestHandler, status: HTTPStatus, kind: str, data: bytes, cache: str
) -> None:
    """One whole response with its length (the connection stays usable)."""
    handler.send_response(status)
    handler.send_header("content-type", kind)
    handler.send_header("content-length", str(len(data)))
    handler.send_header("cache-control", cache)
    handler.end_headers()
    handler.wfile.write(data)


class LoopbackServer:
    """Serves `handler` on 127.0.0.1:port (0: any free port) until stopped."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int, name: str) -> None:
        self._http = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, name=name, daemon=True)

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._http.shutdown()
            self._thread.join(5)
        self._http.server_close()
