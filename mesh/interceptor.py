"""One server interceptor for every service: request id, JSON access logs,
Prometheus RPC metrics, and the mapping of domain errors to gRPC statuses."""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_status import rpc_status
from prometheus_client import Counter, Histogram

from mesh import logs
from mesh.errors import ServiceError
from mesh.identity import USER_HEADER
from mesh.outages import as_unavailable
from mesh.types import Context

log = logging.getLogger("mesh.rpc")

RPC_STARTED = Counter("grpc_server_started_total", "RPCs started", ["grpc_service", "grpc_method"])
RPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs finished, by status code",
    ["grpc_service", "grpc_method", "grpc_code"],
)
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time to finish an RPC (streams: their whole life)",
    ["grpc_service", "grpc_method"],
    buckets=(
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
        60,
        600,
    ),
)

# observability: calls failed by an outage of a backing store, by store
BACKEND_ERRORS = Counter(
    "nearby_backend_errors_total",
    "RPCs answered UNAVAILABLE because Redis or Postgres was out of reach",
    ["backend"],
)
_BACKEND_OF_REASON = {"REDIS_UNAVAILABLE": "Redis"}

_QUIET = ("/grpc.health.v1.", "/grpc.reflection.")


def _count_backend_error(err: ServiceError) -> None:
    backend = err.metadata.get("backend") or _BACKEND_OF_REASON.get(err.reason)
    if backend:
        BACKEND_ERRORS.labels(backend).inc()


class _Call:
    """Book-keeping of one RPC: ids, timing, outcome."""

    def __init__(self, method: str, context: Context) -> None:
        _, service, name = method.split("/", 2) if method.count("/") >= 2 else ("", method, "")
        self.service, self.name, self.method = service, name, method
        self.context = context
        md = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        self.request_id = md.get("x-request-id") or uuid.uuid4().hex
        self.user = md.get(USER_HEADER, "")
        self.start = time.perf_counter()
        self.token = logs.request_id.set(self.request_id)
        RPC_STARTED.labels(service, name).inc()

    async def fail(self, exc: BaseException) -> None:
        if isinstance(exc, ServiceError):
            _count_backend_error(exc)
            await self.context.abort_with_status(rpc_status.to_status(exc.to_status()))
        outage = as_unavailable(exc)
        if outage is not None:
            _count_backend_error(outage)
            log.warning("%s: %s (%s)", self.method, outage.message, exc)
            await self.context.abort_with_status(rpc_status.to_status(outage.to_status()))
        log.exception("unhandled error in %s", self.method)
        await self.context.abort(grpc.StatusCode.INTERNAL, "internal error; it has been logged")

    def finish(self) -> None:
        code = self._code()
        elapsed = time.perf_counter() - self.start
        RPC_HANDLED.labels(self.service, self.name, code).inc()
        RPC_SECONDS.labels(self.service, self.name).observe(elapsed)
        if not self.method.startswith(_QUIET):
            level = logging.INFO if code in ("OK", "CANCELLED") else logging.WARNING
            log.log(
                level,
                "rpc %s %s",
                self.method,
                code,
                extra={
                    "grpc_code": code,
                    "duration_ms": round(elapsed * 1000, 3),
                    "user": self.user,
                },
            )
        logs.request_id.reset(self.token)

    def _code(self) -> str:
        code: Any = self.context.code()
        if code is None:
            return "CANCELLED" if self.context.cancelled() else "OK"
        if isinstance(code, grpc.StatusCode):
            return str(code.name)
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return str(status.name)
        return str(code)


def _wrap_unary_response(behavior: Any, method: str) -> Any:
    async def wrapper(request: Any, context: Context) -> Any:
        call = _Call(method, context)
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await call.fail(exc)
        finally:
            call.finish()

    return wrapper


def _wrap_stream_response(behavior: Any, method: str) -> Any:
    if inspect.isasyncgenfunction(behavior):

        async def gen_wrapper(request: Any, context: Context) -> AsyncIterator[Any]:
            call = _Call(method, context)
            try:
                async for item in behavior(request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await call.fail(exc)
            finally:
                call.finish()

        return gen_wrapper
    return _wrap_unary_response(behavior, method)


class KernelInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        des, ser = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary_response(handler.unary_unary, method), des, ser
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary_response(handler.stream_unary, method), des, ser
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream_response(handler.unary_stream, method), des, ser
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream_response(handler.stream_stream, method), des, ser
        )
