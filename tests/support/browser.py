"""What a browser sends through Envoy, as raw HTTP/1.1 (no browser here): the
grpc-web and Connect protocols' framing, CORS preflights, the dev login.

Blocking calls (http.client): run them with asyncio.to_thread.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass, field
from typing import Any

GRPC_WEB = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
CONNECT_STREAM = {"content-type": "application/connect+proto", "connect-protocol-version": "1"}
CONNECT_UNARY = {"content-type": "application/proto", "connect-protocol-version": "1"}


def envelope(message: bytes, flags: int = 0) -> bytes:
    """One length-prefixed message (grpc-web and Connect streams share the shape)."""
    return bytes([flags]) + len(message).to_bytes(4, "big") + message


def _connection(addr: str, timeout: float) -> http.client.HTTPConnection:
    host, _, port = addr.rpartition(":")
    return http.client.HTTPConnection(host, int(port), timeout=timeout)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def request(
    addr: str,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes = b"",
    timeout: float = 10.0,
) -> Reply:
    """One whole request and response."""
    conn = _connection(addr, timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def post_json(
    addr: str, path: str, doc: Any, origin: str | None = None
) -> tuple[Reply, dict[str, Any]]:
    headers = {"content-type": "application/json"}
    if origin:
        headers["origin"] = origin
    reply = request(addr, "POST", path, headers, json.dumps(doc).encode())
    try:
        parsed = json.loads(reply.body or b"null")
    except ValueError:
        parsed = None
    return reply, parsed if isinstance(parsed, dict) else {}


@dataclass
class Frame:
    """One message of a stream: flags (grpc-web 0x80: trailers; Connect 0x02:
    end of stream) and its bytes."""

    flags: int
    data: bytes


@dataclass
class ServerStream:
    """A server stream read frame by frame as it arrives (grpc-web or Connect)."""

    status: int
    headers: dict[str, str]
    conn: http.client.HTTPConnection
    resp: http.client.HTTPResponse
    frames: list[Frame] = field(default_factory=list)

    def next(self) -> Frame | None:
        """The next frame (blocks); None at the end of the body."""
        head = self.resp.read(5)
        if len(head) < 5:
            return None
        size = int.from_bytes(head[1:5], "big")
        frame = Frame(head[0], self.resp.read(size))
        self.frames.append(frame)
        return frame

    def close(self) -> None:
        self.conn.close()


def open_stream(
    addr: str,
    path: str,
    headers: dict[str, str],
    message: bytes,
    timeout: float = 20.0,
) -> ServerStream:
    conn = _connection(addr, timeout)
    conn.request("POST", path, body=envelope(message), headers=headers)
    resp = conn.getresponse()
    return ServerStream(resp.status, {k.lower(): v for k, v in resp.getheaders()}, conn, resp)


def grpc_web_trailers(frame: Frame) -> dict[str, str]:
    out = {}
    for line in frame.data.decode().split("\r\n"):
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip().lower()] = v.strip()
    return out


def preflight(addr: str, path: str, origin: str) -> Reply:
    """The OPTIONS a browser sends before a cross-origin gRPC call."""
    return request(
        addr,
        "OPTIONS",
        path,
        {
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type,x-grpc-web",
        },
    )
