"""The dev JWKS over loopback HTTP, for Envoy's `remote_jwks`.

Envoy reads a `local_jwks` file once, when it loads its config; a JWKS it
fetches by URL it refetches every `cache_duration`. Serving the dev JWKS file
(read afresh on every request) lets a rotated key reach a running Envoy.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PATH = "/jwks.json"


class JwksServer:
    def __init__(self, jwks: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        source = jwks

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != PATH:
                    self.send_error(404, f"the JWKS is at {PATH}")
                    return
                body = source.read_bytes()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self.url = f"http://{host}:{self.port}{PATH}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="jwks-server", daemon=True
        )

    def start(self) -> JwksServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
