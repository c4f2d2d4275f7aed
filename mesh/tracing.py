"""OpenTelemetry tracing of the mesh: off unless OTEL_EXPORTER_OTLP_ENDPOINT is set.

While tracing is off `TRACER` is None, no interceptor is installed and no
payload carries a trace context: each hook on the hot path is one test of a
flag. When it is on:

- unary RPCs get a SERVER span (the `TracingInterceptor`, parent: the caller's
  `traceparent` metadata, e.g. Envoy's span) and service-to-service calls a
  CLIENT span (`client_interceptors`, which inject `traceparent`);
- a stream is not one span: each location update on it starts its own trace
  (linked to the stream's own context, i.e. Envoy's span of the stream), and
  its `traceparent` travels with the report through the fan-out's batcher
  (`LocationReport.traceparent`), location_svc's publish span and the Redis
  payload (`LocationEvent.traceparent`) to every friend's push span.

Only sampled contexts are passed on, so an unsampled update costs a sampler
decision and nothing downstream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mesh.settings import Settings

log = logging.getLogger("mesh.tracing")

TRACER: trace.Tracer | None = None
"""The process's tracer; None while tracing is off."""
_PROVIDER: TracerProvider | None = None
_PROPAGATOR = TraceContextTextMapPropagator()
_QUIET = ("/grpc.health.v1.", "/grpc.reflection.")

SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)


def sampler(name: str, arg: float) -> Sampler:
    """The sampler named like OTEL_TRACES_SAMPLER (arg: OTEL_TRACES_SAMPLER_ARG)."""
    if name not in SAMPLERS:
        raise ValueError(f"OTEL_TRACES_SAMPLER={name!r}: use one of {', '.join(SAMPLERS)}")
    if not 0.0 <= arg <= 1.0:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={arg!r}: a ratio between 0 and 1")
    base = name.removeprefix("parentbased_")
    root: Sampler = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(arg),
    }[base]
    return ParentBased(root) if name.startswith("parentbased_") else root


def setup(service: str, settings: Settings, exporter: SpanExporter | None = None) -> bool:
    """Start tracing for this process when the settings ask for it; True if on."""
    global TRACER, _PROVIDER
    if not settings.otlp_endpoint and exporter is None:
        return False
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}),
        sampler=sampler(settings.traces_sampler, settings.traces_sampler_arg),
    )
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        endpoint = settings.otlp_endpoint
        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=not endpoint.startswith("https:"))
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    _PROVIDER, TRACER = provider, provider.get_tracer("nearby")
    log.info("tracing on: %s, sampler %s", settings.otlp_endpoint, settings.traces_sampler)
    return True


def shutdown() -> None:
    """Send the spans still buffered and turn tracing off."""
    global TRACER, _PROVIDER
    if _PROVIDER is not None:
        _PROVIDER.shutdown()
    TRACER, _PROVIDER = None, None


# --- trace contexts as strings (the W3C traceparent) ------------------------
def traceparent(span: trace.Span) -> str:
    """The span's W3C traceparent, or "" when it is not sampled (nothing to join)."""
    sc = span.get_span_context()
    if not sc.trace_flags.sampled:
        return ""
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-01"


def current_traceparent() -> str:
    return traceparent(trace.get_current_span()) if TRACER is not None else ""


def parent(tp: str) -> otel_context.Context:
    """A context whose parent span is the one `tp` names (empty context if "")."""
    return _PROPAGATOR.extract({"traceparent": tp}) if tp else otel_context.Context()


def links(tps: Iterable[str]) -> list[Link]:
    """Links to the spans named by these traceparents (empty ones skipped)."""
    out = []
    for tp in tps:
        if tp:
            sc = trace.get_current_span(parent(tp)).get_span_context()
            if sc.is_valid:
                out.append(Link(sc))
    return out


def metadata_context(metadata: Iterable[tuple[str, Any]] | None) -> otel_context.Context:
    """The caller's trace context from gRPC metadata (traceparent, tracestate)."""
    carrier = {k: v for k, v in metadata or () if k in ("traceparent", "tracestate")}
    return _PROPAGATOR.extract(carrier) if carrier else otel_context.Context()


# --- server side ---------------------------------------------------------------
def _rpc_attributes(method: str) -> dict[str, str]:
    _, service, name = method.split("/", 2) if method.count("/") >= 2 else ("", method, "")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def _span_name(method: str) -> str:
    return method.lstrip("/")


def _wrap_unary(behavior: Any, method: str, tracer: trace.Tracer) -> Any:
    name, attrs = _span_name(method), _rpc_attributes(method)

    async def traced(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        ctx = metadata_context(context.invocation_metadata())
        with tracer.start_as_current_span(
            name, context=ctx, kind=SpanKind.SERVER, attributes=attrs, record_exception=False
        ) as span:
            try:
                return await behavior(request, context)
            finally:
                code = context.code()
                if code is not None and code != grpc.StatusCode.OK:
                    label = code.name if isinstance(code, grpc.StatusCode) else str(code)
                    span.set_attribute("rpc.grpc.status_code", label)
                    span.set_status(Status(StatusCode.ERROR, label))

    return traced


class TracingInterceptor(grpc.aio.ServerInterceptor):
    """A SERVER span per unary RPC; streams are traced per message (see module doc)."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not handler.unary_unary or method.startswith(_QUIET):
            return handler
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary(handler.unary_unary, method, self.tracer),
            handler.request_deserializer,
            handler.response_serializer,
        )


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """What the kernel adds in front of its own interceptor (nothing while off)."""
    return [] if TRACER is None else [TracingInterceptor(TRACER)]


# --- client side ---------------------------------------------------------------
class _ClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        method = client_call_details.method
        method = method.decode() if isinstance(method, bytes) else method
        with self.tracer.start_as_current_span(
            _span_name(method), kind=SpanKind.CLIENT, attributes=_rpc_attributes(method)
        ) as span:
            metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()))
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier)
            for key, value in carrier.items():
                metadata.add(key, value)
            call = await continuation(client_call_details._replace(metadata=metadata), request)
            try:
                await call
            except grpc.aio.AioRpcError as exc:
                span.set_attribute("rpc.grpc.status_code", exc.code().name)
                span.set_status(Status(StatusCode.ERROR, exc.code().name))
                raise
            return call


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Interceptors of service-to-service channels (nothing while off)."""
    return [] if TRACER is None else [_ClientInterceptor(TRACER)]


# --- one update: report, publish, push -----------------------------------------
def update_span(stream_metadata: Iterable[tuple[str, Any]] | None) -> trace.Span | None:
    """The span of one location update read from a stream: a new trace, linked
    to the stream's own context (Envoy's span of the stream). None while off."""
    if TRACER is None:
        return None
    lk = []
    sc = trace.get_current_span(metadata_context(stream_metadata)).get_span_context()
    if sc.is_valid:
        lk.append(Link(sc))
    return TRACER.start_span(
        "fanout report",
        context=otel_context.Context(),
        kind=SpanKind.SERVER,
        links=lk,
    )


def batch_span(name: str, tps: Sequence[str]) -> trace.Span | None:
    """A root span for one batched call carrying many traced items (links to each)."""
    if TRACER is None or not any(tps):
        return None
    return TRACER.start_span(
        name, context=otel_context.Context(), kind=SpanKind.INTERNAL, links=links(tps)
    )


def publish_span(tp: str, user_id: str) -> trace.Span | None:
    """location_svc's span of caching and publishing one traced report."""
    if TRACER is None:
        return None
    return TRACER.start_span(
        "location publish",
        context=parent(tp),
        kind=SpanKind.PRODUCER,
        attributes={"messaging.system": "redis", "nearby.user_id": user_id},
    )


def push_spans(
    pushed: Iterable[tuple[str, str, int]], subscriber: str, end_ns: int | None = None
) -> None:
    """One CONSUMER span per friend update written to `subscriber`'s stream:
    (friend id, the publish's traceparent, when the hub received it in ns)."""
    tracer = TRACER
    if tracer is None:
        return
    end = end_ns or time.time_ns()
    for friend, tp, start in pushed:
        span = tracer.start_span(
            "fanout push",
            context=parent(tp),
            kind=SpanKind.CONSUMER,
            start_time=start,
            attributes={
                "messaging.system": "redis",
                "nearby.user_id": friend,
                "nearby.subscriber_id": subscriber,
            },
        )
        span.end(end_time=end)
