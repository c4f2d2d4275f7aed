"""The Envoy edge, built as typed config.

The bootstrap is written as plain Python dicts, then parsed into Envoy's own
protobuf types (`xds-protos`), so a misspelt field or a wrong type fails here
rather than at Envoy start-up; the YAML is emitted from the parsed message.
`envoy --mode validate` then checks what Python cannot (Envoy's value
constraints). See docs/edge.md for why each timeout and limit is what it is.

Request path: cors (browsers' preflights) -> grpc_web, connect_grpc_bridge
(browsers: both to gRPC; stack/envoy_browser.py) -> header_mutation (drop
client-sent identity headers) -> jwt_authn (validate the token, set the
identity headers from its claims) -> router (by gRPC service name).
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# Every `@type` used below must be in the default descriptor pool for Any
# fields to resolve: import the module of each (the names are otherwise unused).
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2  # noqa: F401
from envoy.extensions.filters.http.grpc_web.v3 import grpc_web_pb2  # noqa: F401
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2  # noqa: F401
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_authn_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.resource_monitors.downstream_connections.v3 import (  # noqa: F401
    downstream_connections_pb2,
)
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

from mesh.identity import ADMIN_HEADER, USER_HEADER
from mesh.settings import Settings
from stack import envoy_browser

T = "type.googleapis.com/"
JWT_PROVIDER = "nearby"

#: (cluster, route prefix, gRPC service whose health Envoy checks)
PUBLIC_ROUTES: tuple[tuple[str, str, str], ...] = (
    ("friend_svc", "/nearby.v1.FriendService/", "nearby.v1.FriendService"),
    ("location_svc", "/nearby.v1.LocationService/", "nearby.v1.LocationService"),
    ("presence_svc", "/nearby.v1.PresenceService/", "nearby.v1.PresenceService"),
    ("fanout_svc", "/nearby.v1.NearbyService/", "nearby.v1.NearbyService"),
)
#: Reflection is served by friend_svc (every backend lists every service) and
#: needs no token: the API's protos are public.
REFLECTION_PREFIX = "/grpc.reflection."


@dataclass(frozen=True)
class EdgeConfig:
    """Everything the edge config depends on (defaults: `make run`)."""

    friend: str = "127.0.0.1:50051"
    location: str = "127.0.0.1:50052"
    presence: str = "127.0.0.1:50053"
    fanout: Sequence[str] = ("127.0.0.1:50054",)
    jwks_path: str = ".nearby/jwks.json"
    issuer: str = "nearby-dev"
    audience: str = "nearby"
    listen_host: str = "0.0.0.0"
    port: int = 8080
    admin_port: int = 9901
    #: quiet streams are cut after this; above the app heartbeat (HEARTBEAT_S)
    stream_idle_timeout_s: float = 300.0
    #: HTTP/2 PING interval/timeout on client and backend connections
    keepalive_interval_s: float = 30.0
    keepalive_timeout_s: float = 10.0
    #: active gRPC health checks of every backend
    health_interval_s: float = 3.0
    health_timeout_s: float = 1.0
    connect_timeout_s: float = 1.0
    #: a host that refused a connection or reset is ejected this long
    ejection_s: float = 2.0
    #: circuit breakers (per cluster): Envoy's default of 1,024 would cap streams
    max_requests: int = 1_000_000
    #: concurrent retries per cluster (Envoy's default is 3): when a replica
    #: dies, every stream that picked it in the moment before its ejection
    #: is retried on another one
    max_retries: int = 1_000
    #: concurrent streams per HTTP/2 connection, both sides
    max_concurrent_streams: int = 100_000
    max_downstream_connections: int = 100_000
    #: HTTP/2 stream window on both sides of the edge (RFC minimum 65,535). A
    #: client that stops reading then holds at most this much in flight on each
    #: hop, so the fan-out's writes block and its stall watchdog ends the stream.
    #: Envoy's default (256 MiB) would absorb the whole backlog instead.
    stream_window_bytes: int = 64 * 1024
    #: HTTP/2 connection window: shared by every stream of one connection, so it
    #: stays large; each stalled stream holds at most one stream window of it
    #: (1,024 stalled streams per upstream connection before others wait).
    connection_window_bytes: int = 64 * 1024 * 1024
    #: Envoy's read/write buffer per connection, client side and backend side
    #: (Envoy's default is 1 MiB): past it Envoy stops reading from the peer.
    buffer_limit_bytes: int = 64 * 1024
    access_log: bool = False
    #: browser origins granted CORS (exact); none by default
    cors_origins: Sequence[str] = ()
    #: dev mode only: host:port of the dev-token server behind POST /dev/token
    dev_token: str = ""


def _dur(seconds: float) -> str:
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"{text}s"


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"backend address {addr!r} is not host:port")
    return host.strip("[]"), int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _keepalive(cfg: EdgeConfig) -> dict[str, Any]:
    return {
        "interval": _dur(cfg.keepalive_interval_s),
        "timeout": _dur(cfg.keepalive_timeout_s),
    }


def _http2(cfg: EdgeConfig) -> dict[str, Any]:
    return {
        "connection_keepalive": _keepalive(cfg),
        "max_concurrent_streams": cfg.max_concurrent_streams,
        "initial_stream_window_size": cfg.stream_window_bytes,
        "initial_connection_window_size": cfg.connection_window_bytes,
    }


def _cluster(
    cfg: EdgeConfig, name: str, addrs: Sequence[str], health_service: str
) -> dict[str, Any]:
    if not addrs:
        raise ValueError(f"cluster {name} needs at least one backend address")
    hosts = [_split(a) for a in addrs]
    limits = {
        "max_connections": cfg.max_requests,
        "max_pending_requests": cfg.max_requests,
        "max_requests": cfg.max_requests,
        "max_retries": cfg.max_retries,
    }
    return {
        "name": name,
        "type": "STATIC" if all(_is_ip(h) for h, _ in hosts) else "STRICT_DNS",
        "connect_timeout": _dur(cfg.connect_timeout_s),
        "per_connection_buffer_limit_bytes": cfg.buffer_limit_bytes,
        # streams are long-lived: send a new one to the replica with the fewest
        "lb_policy": "LEAST_REQUEST",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": h, "port_value": p}}
                            }
                        }
                        for h, p in hosts
                    ]
                }
            ],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "common_http_protocol_options": {"idle_timeout": "3600s"},
                "explicit_http_config": {"http2_protocol_options": _http2(cfg)},
            }
        },
        "health_checks": [
            {
                "timeout": _dur(cfg.health_timeout_s),
                "interval": _dur(cfg.health_interval_s),
                # the default (60 s) would leave an idle cluster's dead host in
                "no_traffic_interval": _dur(cfg.health_interval_s),
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": health_service},
            }
        ],
        # never route to a host that failed its health check, even when all did
        # (Envoy's default "panic" mode would then send to every host)
        "common_lb_config": {"healthy_panic_threshold": {"value": 0.0}},
        # eject a host at its first refused connection or reset (a replica that
        # died), not after health-check intervals; a passing health check or
        # the ejection time brings it back
        "outlier_detection": {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 1,
            "enforcing_consecutive_local_origin_failure": 100,
            "interval": "1s",
            "base_ejection_time": _dur(cfg.ejection_s),
            "max_ejection_percent": 100,
        },
        "circuit_breakers": {
            "thresholds": [
                {"priority": "DEFAULT", **limits},
                {"priority": "HIGH", **limits},
            ]
        },
    }


def _http_filters(cfg: EdgeConfig) -> list[dict[str, Any]]:
    cors, connect = envoy_browser.filters()
    return [
        cors,
        {
            "name": "envoy.filters.http.grpc_web",
            "typed_config": {"@type": T + "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"},
        },
        connect,
        {
            # before jwt_authn: a client must never choose its own identity
            "name": "envoy.filters.http.header_mutation",
            "typed_config": {
                "@type": T + "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                "mutations": {
                    "request_mutations": [{"remove": USER_HEADER}, {"remove": ADMIN_HEADER}]
                },
            },
        },
        {
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": T + "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {
                    JWT_PROVIDER: {
                        "issuer": cfg.issuer,
                        "audiences": [cfg.audience],
                        "local_jwks": {"filename": cfg.jwks_path},
                        "forward": False,
                        "claim_to_headers": [
                            {"header_name": USER_HEADER, "claim_name": "sub"},
                            {"header_name": ADMIN_HEADER, "claim_name": "admin"},
                        ],
                    }
                },
                "rules": [
                    {"match": {"prefix": REFLECTION_PREFIX}},
                    *([envoy_browser.dev_token_jwt_rule()] if cfg.dev_token else []),
                    # everything else needs a valid token (deny by default)
                    {"match": {"prefix": "/"}, "requires": {"provider_name": JWT_PROVIDER}},
                ],
                "bypass_cors_preflight": True,
            },
        },
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"},
        },
    ]


def _retry_policy() -> dict[str, Any]:
    """Retry only what never reached a backend (safe for every call, reports
    included): a refused connection or a reset before the request was sent.
    Each retry picks another host, so a dead replica costs a retry, not an error.
    """
    return {
        "retry_on": "connect-failure,refused-stream,reset-before-request",
        "num_retries": 2,
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": T + "envoy.extensions.retry.host.previous_hosts.v3."
                    "PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 3,
        "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
    }


def _routes(cfg: EdgeConfig) -> list[dict[str, Any]]:
    # No `grpc: {}` match: the route is chosen before grpc_web rewrites a
    # browser's content type to application/grpc, so it would 404 grpc-web.
    routes = [
        {
            "match": {"prefix": prefix},
            # the 15 s default would kill every stream
            "route": {"cluster": cluster, "timeout": "0s", "retry_policy": _retry_policy()},
        }
        for cluster, prefix, _ in PUBLIC_ROUTES
    ]
    routes[:0] = envoy_browser.json_refusal_routes("/nearby.v1.")
    if cfg.dev_token:
        routes.insert(0, envoy_browser.dev_token_route())
    routes.append(
        {
            "match": {"prefix": REFLECTION_PREFIX},
            "route": {"cluster": "friend_svc", "timeout": "0s"},
        }
    )
    # /mesh.internal.v1.* and anything else: no route (gRPC UNIMPLEMENTED)
    return routes


def _access_log() -> list[dict[str, Any]]:
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": T + "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
            },
        }
    ]


def build(cfg: EdgeConfig) -> dict[str, Any]:
    """The bootstrap as a plain dict (not yet checked; see `validate`)."""
    hcm: dict[str, Any] = {
        "@type": T
        + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "edge",
        # h2c for gRPC, HTTP/1.1 too for grpc-web from browsers
        "codec_type": "AUTO",
        "stream_idle_timeout": _dur(cfg.stream_idle_timeout_s),
        "common_http_protocol_options": {"idle_timeout": "3600s"},
        "http2_protocol_options": _http2(cfg),
        "route_config": {
            "name": "nearby",
            "virtual_hosts": [
                {
                    "name": "nearby",
                    "domains": ["*"],
                    "routes": _routes(cfg),
                    "typed_per_filter_config": envoy_browser.cors_policy(cfg.cors_origins),
                }
            ],
        },
        "http_filters": _http_filters(cfg),
        # jwt_authn answers 401 for a missing/bad token but 403 for a valid
        # signature with the wrong audience; both mean "no valid token", so
        # both become gRPC UNAUTHENTICATED (401 -> 16). jwt_authn is the only
        # filter here that replies 403 (backends' errors travel as grpc-status).
        "local_reply_config": {
            "mappers": [
                {
                    "filter": {
                        "status_code_filter": {
                            "comparison": {
                                "op": "EQ",
                                "value": {"default_value": 403, "runtime_key": "edge.jwt_403"},
                            }
                        }
                    },
                    "status_code": 401,
                },
                {
                    # A stream that said nothing for stream_idle_timeout before
                    # its response began gets 408, which gRPC reads as UNKNOWN;
                    # make it UNAVAILABLE so that clients reconnect.
                    "filter": {
                        "status_code_filter": {
                            "comparison": {
                                "op": "EQ",
                                "value": {"default_value": 408, "runtime_key": "edge.idle_408"},
                            }
                        }
                    },
                    "status_code": 503,
                    "body": {"inline_string": "stream idle timeout: reconnect"},
                },
            ]
        },
    }
    if cfg.access_log:
        hcm["access_log"] = _access_log()
    clusters = [
        _cluster(cfg, "friend_svc", [cfg.friend], PUBLIC_ROUTES[0][2]),
        _cluster(cfg, "location_svc", [cfg.location], PUBLIC_ROUTES[1][2]),
        _cluster(cfg, "presence_svc", [cfg.presence], PUBLIC_ROUTES[2][2]),
        _cluster(cfg, "fanout_svc", list(cfg.fanout), PUBLIC_ROUTES[3][2]),
    ]
    if cfg.dev_token:
        host, port = _split(cfg.dev_token)
        clusters.append(envoy_browser.dev_token_cluster(host, port, _dur(cfg.connect_timeout_s)))
    return {
        "node": {"id": "nearby-edge", "cluster": "nearby"},
        "admin": {
            # loopback only: the admin API can reconfigure and stop Envoy
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": cfg.admin_port}}
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "grpc",
                    "address": {
                        "socket_address": {"address": cfg.listen_host, "port_value": cfg.port}
                    },
                    "per_connection_buffer_limit_bytes": cfg.buffer_limit_bytes,
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": T + "envoy.extensions.resource_monitors.downstream_connections.v3."
                        "DownstreamConnectionsConfig",
                        "max_active_downstream_connections": cfg.max_downstream_connections,
                    },
                }
            ]
        },
    }


def validate(doc: dict[str, Any]) -> Any:
    """Parse into Envoy's typed Bootstrap; unknown fields or bad types raise ParseError."""
    return json_format.ParseDict(doc, bootstrap_pb2.Bootstrap())


HEADER = (
    "# Envoy edge of nearby. GENERATED by envoy/generate.py from stack/envoy_config.py:\n"
    "# do not edit by hand; change the Python and re-run `make envoy-config`.\n"
)


def render(cfg: EdgeConfig) -> str:
    """The checked bootstrap as YAML."""
    msg = validate(build(cfg))
    as_json = json_format.MessageToJson(msg, preserving_proto_field_name=True)
    body = yaml.safe_dump(json.loads(as_json), sort_keys=False, default_flow_style=False)
    return HEADER + body


def write(cfg: EdgeConfig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(cfg))
    return path


def replica_count(settings: Settings) -> int:
    """Fan-out replicas: FANOUT_REPLICAS, or one per CPU core (an asyncio loop uses one)."""
    return settings.fanout_replicas if settings.fanout_replicas > 0 else (os.cpu_count() or 1)


def fanout_addresses(settings: Settings, replicas: int) -> list[str]:
    host = "127.0.0.1" if settings.bind_host in ("0.0.0.0", "::", "") else settings.bind_host
    return [f"{host}:{settings.fanout_port + i}" for i in range(replicas)]


def from_settings(
    settings: Settings,
    *,
    fanout: Sequence[str] | None = None,
    jwks_path: str | None = None,
    **overrides: Any,
) -> EdgeConfig:
    """The edge for a mesh configured by `settings` (the env of `nearby run`)."""
    jwks = Path(jwks_path or settings.jwks_path or Path(settings.nearby_home, "jwks.json"))
    values: dict[str, Any] = {
        "friend": settings.friend_addr,
        "location": settings.location_addr,
        "presence": settings.presence_addr,
        "fanout": tuple(fanout or fanout_addresses(settings, replica_count(settings))),
        # Envoy resolves relative paths against its own working directory
        "jwks_path": str(jwks if jwks.is_absolute() else jwks.resolve()),
        "issuer": settings.jwt_issuer,
        "audience": settings.jwt_audience,
        "port": settings.envoy_port,
        "admin_port": settings.envoy_admin_port,
        "stream_idle_timeout_s": settings.stream_idle_timeout_s,
        "cors_origins": tuple(envoy_browser.origins(settings)),
        "dev_token": f"127.0.0.1:{settings.dev_token_port}" if settings.dev_mode else "",
    }
    values.update(overrides)
    return EdgeConfig(**values)
