"""The live map page of a development stack: the built `web/dist` on MAP_PORT.

`nearby run --dev` serves it next to the dev login, on loopback, so a
browser at http://localhost:MAP_PORT/ signs in through Envoy's /dev/token
and watches its friends over the Connect protocol; Envoy grants that origin
CORS in dev mode (stack/envoy_browser.py). Besides the files it answers
`GET /config.json` with what the page needs to know about this stack: the
edge's port and the optional map tile URL (MAP_TILE_URL). The page is built
by `make run` (`npm run build` in web/); an unbuilt page answers 503 with
the command that builds it.
"""

from __future__ import annotations

import json
import logging
import mimetypes
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from mesh.settings import Settings
from stack import paths
from stack.httpd import LoopbackServer, send

log = logging.getLogger("stack.mappage")

NOT_BUILT = (
    "The map page is not built. `make run` builds it; by hand: cd web && npm ci && npm run build"
)


def dist_folder() -> Path:
    """Where the built page is: web/dist of the checkout."""
    return (paths.checkout() or Path.cwd()) / "web" / "dist"


def page_config(settings: Settings) -> dict[str, Any]:
    """What /config.json tells the page (it builds the edge URL from its own host)."""
    return {"envoy_port": settings.envoy_port, "tile_url": settings.map_tile_url}


def _handler(root: Path, config: bytes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path = unquote(urlsplit(self.path).path)
            if path == "/config.json":
                self._send(HTTPStatus.OK, "application/json", config)
                return
            if not (root / "index.html").is_file():
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", NOT_BUILT.encode())
                return
            file = (root / path.lstrip("/")).resolve()
            if file.is_dir():
                file = file / "index.html"
            if not file.is_relative_to(root.resolve()) or not file.is_file():
                self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found")
                return
            kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            self._send(HTTPStatus.OK, kind, file.read_bytes())

        def _send(self, status: HTTPStatus, kind: str, data: bytes) -> None:
            send(self, status, kind, data, "no-cache")

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("map page: " + format, *args)

    return Handler


class MapPageServer:
    """Serves the page on 127.0.0.1:MAP_PORT, on a thread of its own."""

    def __init__(self, settings: Settings, root: Path | None = None, port: int | None = None):
        config = json.dumps(page_config(settings)).encode()
        chosen = settings.map_port if port is None else port
        self.root = root or dist_folder()
        self._server = LoopbackServer(_handler(self.root, config), chosen, "map-page")

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}/"

    def start(self) -> MapPageServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()
