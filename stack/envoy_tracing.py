"""Envoy's part of a trace: its OpenTelemetry tracer (only when tracing is on).

Envoy starts (or continues) the trace of each request it routes, sends its
spans over OTLP/gRPC to the same collector as the services, and passes the
W3C `traceparent` on to the backend, whose server span is then its child.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from envoy.config.trace.v3 import opentelemetry_pb2  # noqa: F401 - @type below

from mesh.settings import Settings

T = "type.googleapis.com/"
COLLECTOR = "opentelemetry_collector"


def sample_ratio(settings: Settings) -> float:
    """The share of new traces the services sample, which Envoy applies too."""
    base = settings.traces_sampler.removeprefix("parentbased_")
    return {"always_on": 1.0, "always_off": 0.0}.get(base, settings.traces_sampler_arg)


def hcm_tracing(ratio: float) -> dict[str, Any]:
    """The HttpConnectionManager's `tracing` block."""
    return {
        "random_sampling": {"value": round(100.0 * ratio, 6)},
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": T + "envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": COLLECTOR}, "timeout": "1s"},
                "service_name": "envoy",
            },
        },
    }


def collector_cluster(endpoint: str, connect_timeout: str) -> dict[str, Any]:
    """The cluster of the OTLP/gRPC collector named by OTEL_EXPORTER_OTLP_ENDPOINT."""
    parts = urlsplit(endpoint if "//" in endpoint else f"http://{endpoint}")
    if not parts.hostname:
        raise ValueError(f"OTEL_EXPORTER_OTLP_ENDPOINT={endpoint!r}: expected http://host:port")
    port = parts.port or 4317
    return {
        "name": COLLECTOR,
        "type": "STRICT_DNS",
        "connect_timeout": connect_timeout,
        "load_assignment": {
            "cluster_name": COLLECTOR,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": parts.hostname,
                                        "port_value": port,
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    }
