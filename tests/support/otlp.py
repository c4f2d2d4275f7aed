"""An in-process OTLP/gRPC trace receiver: the collector's own protocol
(opentelemetry-proto's TraceService), on a port of its own.

    async with receiver() as otlp:          # otlp.endpoint = "http://127.0.0.1:PORT"
        ...                                  # processes export their spans to it
        spans = await otlp.wait_for(lambda spans: ...)

Also runnable on its own (`python -m tests.support.otlp PORT [--count]`) so
that a benchmark's processes have a real collector to export to: it prints its
endpoint, then a count every 10 s, and on SIGTERM a last line
`{"spans": N, "exports": M}`. `--count` keeps counts only (no spans in memory),
for runs that trace every update.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as ts_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

T = TypeVar("T")

KIND = {v: k.removeprefix("SPAN_KIND_") for k, v in trace_pb2.Span.SpanKind.items()}


@dataclass(frozen=True)
class Span:
    """One received span, with the service that sent it."""

    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    links: tuple[tuple[str, str], ...]  # (trace id, span id)
    attributes: dict[str, Any]
    start_ns: int
    end_ns: int


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def _spans(request: ts.ExportTraceServiceRequest) -> list[Span]:
    out = []
    for rs in request.resource_spans:
        attrs = {a.key: _value(a.value) for a in rs.resource.attributes}
        service = str(attrs.get("service.name", ""))
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    Span(
                        service=service,
                        name=s.name,
                        kind=KIND.get(s.kind, str(s.kind)),
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        links=tuple((lk.trace_id.hex(), lk.span_id.hex()) for lk in s.links),
                        attributes={a.key: _value(a.value) for a in s.attributes},
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                    )
                )
    return out


class Receiver(ts_grpc.TraceServiceServicer):
    def __init__(self, *, keep: bool = True) -> None:
        self.keep = keep  # False: count spans without keeping them
        self.spans: list[Span] = []
        self.count = 0
        self.exports = 0
        self._changed = asyncio.Event()
        self.endpoint = ""

    async def Export(
        self, request: ts.ExportTraceServiceRequest, context: Any
    ) -> ts.ExportTraceServiceResponse:
        if self.keep:
            got = _spans(request)
            self.spans.extend(got)
            self.count += len(got)
        else:
            self.count += sum(
                len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans
            )
        self.exports += 1
        self._changed.set()
        return ts.ExportTraceServiceResponse()

    def trace(self, trace_id: str) -> list[Span]:
        return [s for s in self.spans if s.trace_id == trace_id]

    async def wait_for(self, found: Callable[[list[Span]], T | None], within_s: float = 20.0) -> T:
        """Until `found(spans)` returns something (checked at each export)."""
        try:
            async with asyncio.timeout(within_s):
                while True:
                    result = found(self.spans)
                    if result:
                        return result
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            seen = sorted({(s.service, s.name) for s in self.spans})
            raise AssertionError(f"not among {len(self.spans)} spans received: {seen}") from None


@contextlib.asynccontextmanager
async def receiver(port: int = 0, *, keep: bool = True) -> AsyncIterator[Receiver]:
    server = grpc.aio.server()
    rec = Receiver(keep=keep)
    ts_grpc.add_TraceServiceServicer_to_server(rec, server)  # type: ignore[no-untyped-call]
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    rec.endpoint = f"http://127.0.0.1:{bound}"
    try:
        yield rec
    finally:
        await server.stop(0)


async def _serve(port: int, keep: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with receiver(port, keep=keep) as rec:
        print(f"OTLP receiver on {rec.endpoint}", flush=True)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 10)
            if not stop.is_set():
                print(f"{rec.count} spans in {rec.exports} exports", flush=True)
        print(json.dumps({"spans": rec.count, "exports": rec.exports}), flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    ports = [int(a) for a in args if a.isdigit()]
    asyncio.run(_serve(ports[0] if ports else 4317, keep="--count" not in args))
