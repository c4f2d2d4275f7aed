"""The dev login of a development stack: `POST /dev/token` through Envoy.

    POST /dev/token  {"user_id": "alice", "display_name": "Alice", "ttl_s": 3600}
    200 {"token": "<JWT>", "user_id": "alice", "created": true, "expires_in_s": 3600}

Only `nearby run --dev` (DEV_MODE=1) runs it: a small HTTP server on loopback
(DEV_TOKEN_PORT) in the launcher's process, which Envoy routes `/dev/token` to
(stack/envoy_browser.py); without dev mode neither the server nor the route
exists. It signs with the stack's dev key (stack/tokens.py), exactly like
`nearby token USER_ID`, and never adds the admin claim: a request asking for
it is refused. A first-time user is created in friend_svc (display name: the
one given, else the user id), because friend requests need an existing
caller; an existing user is left as it is. `display_name` and `ttl_s`
(1 s to 1 day, default 1 h) are optional.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from nearby.v1 import friend_service_pb2 as fpb
from nearby.v1 import friend_service_pb2_grpc as fpb_grpc

from mesh.identity import ADMIN_HEADER, USER_HEADER, USER_ID_RE
from mesh.settings import Settings
from stack.envoy_browser import DEV_TOKEN_PATH
from stack.tokens import SigningKey

log = logging.getLogger("stack.devtoken")

DEFAULT_TTL_S = 3600
MAX_TTL_S = 86400
MAX_BODY = 4096
#: who the dev login acts as when it creates a user (on loopback, past Envoy)
OPERATOR = "dev-login"


class BadRequest(Exception):
    """The caller's mistake: 400 with this message."""


class DevLogin:
    """Mints a user's dev token, creating the user first when needed."""

    def __init__(self, key: SigningKey, settings: Settings) -> None:
        self.key = key
        self.settings = settings
        self._channel = grpc.insecure_channel(settings.friend_addr)
        self._friends = fpb_grpc.FriendServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def login(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest('send a JSON object: {"user_id": "alice"}')
        if body.get("admin"):
            raise BadRequest(
                "the dev login never mints admin tokens: use `nearby token ID --admin` "
                "on the machine that runs the stack"
            )
        user_id = body.get("user_id")
        if not isinstance(user_id, str) or not USER_ID_RE.match(user_id):
            raise BadRequest("user_id: must be 1-64 characters of A-Z a-z 0-9 . _ -")
        name = body.get("display_name", user_id)
        if not isinstance(name, str):
            raise BadRequest("display_name: must be a string")
        ttl = body.get("ttl_s", DEFAULT_TTL_S)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL_S:
            raise BadRequest(f"ttl_s: must be a whole number of seconds from 1 to {MAX_TTL_S}")
        created = self._ensure_user(user_id, name or user_id)
        token = self.key.sign(
            user_id,
            issuer=self.settings.jwt_issuer,
            audience=self.settings.jwt_audience,
            ttl_s=ttl,
        )
        return {"token": token, "user_id": user_id, "created": created, "expires_in_s": ttl}

    def _ensure_user(self, user_id: str, name: str) -> bool:
        try:
            self._friends.CreateUser(
                fpb.CreateUserRequest(user_id=user_id, display_name=name),
                metadata=((USER_HEADER, OPERATOR), (ADMIN_HEADER, "true")),
                timeout=5.0,
            )
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.ALREADY_EXISTS:
                return False
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise BadRequest(str(exc.details())) from exc
            raise
        return True


def _handler(login: DevLogin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            if self.path != DEV_TOKEN_PATH:
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"POST {DEV_TOKEN_PATH} only"})
                return
            length = int(self.headers.get("content-length") or 0)
            if length > MAX_BODY:
                self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "body too large"})
                return
            try:
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except ValueError as exc:
                    raise BadRequest('send a JSON object: {"user_id": "alice"}') from exc
                self._reply(HTTPStatus.OK, login.login(body))
            except BadRequest as exc:
                self._reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            except grpc.RpcError as exc:
                log.warning("dev login: friend_svc: %s", exc)
                self._reply(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    {"error": "could not create the user (friend_svc): try again"},
                )

        def do_GET(self) -> None:
            self._reply(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"POST {DEV_TOKEN_PATH}"})

        def _reply(self, status: HTTPStatus, doc: dict[str, Any]) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("cache-control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("dev login: " + format, *args)

    return Handler


class DevTokenServer:
    """The HTTP server behind Envoy's /dev/token, on a thread of its own."""

    def __init__(self, key: SigningKey, settings: Settings, port: int | None = None) -> None:
        self.login = DevLogin(key, settings)
        chosen = settings.dev_token_port if port is None else port
        self._http = ThreadingHTTPServer(("127.0.0.1", chosen), _handler(self.login))
        self._http.daemon_threads = True
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="dev-token", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    def start(self) -> DevTokenServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._http.shutdown()
            self._thread.join(5)
        self._http.server_close()
        self.login.close()
