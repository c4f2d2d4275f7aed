"""A frozen app, as the edge sees it: a raw HTTP/2 client (h2) that opens
`Connect` through Envoy, sends its first location, reads its socket (so no
kernel buffer hides anything) but never returns flow-control credit. It
records how and when its stream ended (RST_STREAM, trailers, or the
connection closing)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time

import h2.config
import h2.connection
import h2.events
from nearby.v1 import nearby_service_pb2 as pb


def grpc_frame(msg: pb.ConnectRequest) -> bytes:
    body = msg.SerializeToString()
    return b"\x00" + struct.pack("!I", len(body)) + body


class FrozenClient:
    def __init__(self, port: int, token: str, first: pb.ConnectRequest) -> None:
        self.port, self.token, self.first = port, token, first
        self.received = 0
        self.ended_at: float | None = None
        self.how = ""
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writer = writer
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", f"127.0.0.1:{self.port}"),
                (":path", "/nearby.v1.NearbyService/Connect"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("authorization", f"Bearer {self.token}"),
            ],
        )
        conn.send_data(sid, grpc_frame(self.first))  # the stream stays open
        writer.write(conn.data_to_send())
        self._task = asyncio.create_task(self._read(reader, writer, conn))

    async def _read(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: h2.connection.H2Connection,
    ) -> None:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                self._end("connection closed")
                return
            self.received += len(data)
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.StreamReset):
                    self._end(f"reset ({event.error_code!r})")
                elif isinstance(event, h2.events.TrailersReceived):
                    status = dict(event.headers).get(b"grpc-status", b"?")
                    self._end(f"trailers (grpc-status {status.decode()})")
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self._end("GOAWAY")
            # SETTINGS and PING acknowledgements only: received data is never
            # acknowledged (acknowledge_received_data), so no WINDOW_UPDATE
            out = conn.data_to_send()
            if out:
                writer.write(out)

    def _end(self, how: str) -> None:
        if self.ended_at is None:
            self.ended_at, self.how = time.monotonic(), how

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._writer is not None:
            self._writer.close()
