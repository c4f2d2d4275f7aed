"""The security parts of the Envoy edge, as config fragments for envoy_config.

- **JWKS source**: a local file (`local_jwks`, read once when Envoy loads its
  config) or a URL (`remote_jwks`, fetched when Envoy starts and again every
  `jwks_cache_s`, so a new key is picked up without a restart).
- **Token facts for the backends**: besides the identity headers, jwt_authn
  sets `x-nearby-token-exp` from the verified `exp`; the fan-out ends a
  stream at it. Like the identity headers it is stripped from what clients
  send (envoy_config's header_mutation strips every `*_HEADER` of
  mesh/identity.py).
- **Per-user rate limit** on unary calls: `local_ratelimit` keyed on the
  authenticated user id (one token bucket per user id, per Envoy), answering
  gRPC RESOURCE_EXHAUSTED with a `retry-after` hint. Streams are exempt (the
  fan-out caps them per user instead).
- **TLS at the edge**: a second listener with the same HTTP pipeline behind a
  TLS handshake (ALPN h2 and http/1.1). A cleartext client on that port is
  answered in cleartext with a message saying so, rather than a reset.
- **mTLS to the backends** (optional): every backend cluster presents the
  mesh certificate and checks the backend's against the mesh CA.

See docs/edge.md for the why of each value.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

# Every `@type` below must be in the default descriptor pool (see envoy_config).
from envoy.config.route.v3 import route_components_pb2  # noqa: F401
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2  # noqa: F401
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401

from mesh.identity import ADMIN_HEADER, TOKEN_EXP_HEADER, USER_HEADER

if TYPE_CHECKING:
    from stack.envoy_config import EdgeConfig

T = "type.googleapis.com/"
RATE_LIMIT_FILTER = "envoy.filters.http.local_ratelimit"
JWKS_CLUSTER = "jwks"
#: streaming RPCs: not rate limited per call (the fan-out caps streams per user)
STREAMING_METHODS: tuple[str, ...] = (
    "/nearby.v1.NearbyService/Connect",
    "/nearby.v1.NearbyService/Watch",
)
#: system CA bundle (Debian) for an https JWKS_URL
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"


def _dur(seconds: float) -> str:
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"{text}s"


# --- JWT: where the keys come from, what the backends learn ------------------


def jwks_source(cfg: EdgeConfig) -> dict[str, Any]:
    """The provider's `local_jwks` or `remote_jwks` part."""
    if not cfg.jwks_url:
        return {"local_jwks": {"filename": cfg.jwks_path}}
    return {
        "remote_jwks": {
            "http_uri": {"uri": cfg.jwks_url, "cluster": JWKS_CLUSTER, "timeout": "2s"},
            "cache_duration": _dur(cfg.jwks_cache_s),
            # fetched when Envoy starts (the listener waits for it) and again
            # when the cache expires, never on a request's path
            "async_fetch": {"fast_listener": False, "failed_refetch_duration": "1s"},
            "retry_policy": {
                "num_retries": 3,
                "retry_back_off": {"base_interval": "0.2s", "max_interval": "2s"},
            },
        }
    }


def jwt_checks(cfg: EdgeConfig) -> dict[str, Any]:
    """Provider fields beyond the identity: leeway and the expiry header."""
    return {
        # Envoy's default leeway is 60 s; the fan-out ends a stream at exp itself
        "clock_skew_seconds": cfg.clock_skew_s,
        "require_expiration": True,
    }


def expiry_claim_header() -> dict[str, str]:
    return {"header_name": TOKEN_EXP_HEADER, "claim_name": "exp"}


def jwks_clusters(cfg: EdgeConfig) -> list[dict[str, Any]]:
    """The cluster Envoy fetches a remote JWKS through (none for a file)."""
    if not cfg.jwks_url:
        return []
    url = urlsplit(cfg.jwks_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"JWKS_URL {cfg.jwks_url!r}: use http(s)://host[:port]/path")
    port = url.port or (443 if url.scheme == "https" else 80)
    cluster: dict[str, Any] = {
        "name": JWKS_CLUSTER,
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": JWKS_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": url.hostname, "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    if url.scheme == "https":
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": url.hostname,
                "common_tls_context": {
                    "validation_context": {
                        "trusted_ca": {"filename": cfg.jwks_ca_path or SYSTEM_CA},
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"exact": url.hostname}}
                        ],
                    }
                },
            },
        }
    return [cluster]


# --- per-user rate limit of unary calls -------------------------------------


def rate_limit_filters(cfg: EdgeConfig) -> list[dict[str, Any]]:
    """local_ratelimit after jwt_authn (it keys on the header jwt_authn sets)."""
    if cfg.rate_limit_per_s <= 0:
        return []
    # whole tokens per fill: fill every 1/rate s, or `rate` tokens every second
    per_fill, every_s = (1, 1.0 / cfg.rate_limit_per_s)
    if cfg.rate_limit_per_s >= 1:
        per_fill, every_s = round(cfg.rate_limit_per_s), 1.0
    bucket = {
        "max_tokens": max(cfg.rate_limit_burst, per_fill),
        "tokens_per_fill": per_fill,
        "fill_interval": _dur(max(every_s, 0.05)),
    }
    always = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    return [
        {
            "name": RATE_LIMIT_FILTER,
            "typed_config": {
                "@type": T + "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                "stat_prefix": "per_user",
                # requests without a user descriptor (operators' admin tokens)
                # share this bucket: big enough never to bind
                "token_bucket": {
                    "max_tokens": 1_000_000,
                    "tokens_per_fill": 1_000_000,
                    "fill_interval": "1s",
                },
                "always_consume_default_token_bucket": False,
                "filter_enabled": {**always, "runtime_key": "edge.rate_limit_enabled"},
                "filter_enforced": {**always, "runtime_key": "edge.rate_limit_enforced"},
                "rate_limits": [
                    {
                        "actions": [
                            {
                                # operators' tokens (admin: true) are not limited:
                                # no descriptor at all when the admin header is there
                                "header_value_match": {
                                    "descriptor_key": "caller",
                                    "descriptor_value": "user",
                                    "expect_match": False,
                                    "headers": [{"name": ADMIN_HEADER, "present_match": True}],
                                }
                            },
                            {
                                "request_headers": {
                                    "header_name": USER_HEADER,
                                    "descriptor_key": "user",
                                    "skip_if_absent": True,
                                }
                            },
                        ]
                    }
                ],
                # an entry without a value: one bucket per distinct user id,
                # at most max_dynamic_descriptors of them (least recently used go)
                "descriptors": [
                    {
                        "entries": [{"key": "caller", "value": "user"}, {"key": "user"}],
                        "token_bucket": bucket,
                    }
                ],
                "max_dynamic_descriptors": cfg.rate_limit_users,
                # Envoy's 429 would reach gRPC clients as UNAVAILABLE (which
                # they retry at once); RESOURCE_EXHAUSTED says "slow down"
                "rate_limited_as_resource_exhausted": True,
                "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
                "response_headers_to_add": [
                    {
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                        "header": {
                            "key": "retry-after",
                            "value": str(max(1, math.ceil(1.0 / cfg.rate_limit_per_s))),
                        },
                    }
                ],
            },
        }
    ]


def local_reply_mappers(cfg: EdgeConfig) -> list[dict[str, Any]]:
    """The rate limit's answer in the caller's words (Envoy says
    "local_rate_limited"); the status stays RESOURCE_EXHAUSTED."""
    if cfg.rate_limit_per_s <= 0:
        return []
    text = (
        f"too many calls: each user may make {cfg.rate_limit_per_s:g} calls per second "
        f"(bursts of {cfg.rate_limit_burst}); retry after the seconds in retry-after"
    )
    return [
        {
            "filter": {
                "status_code_filter": {
                    "comparison": {
                        "op": "EQ",
                        "value": {"default_value": 429, "runtime_key": "edge.rate_limited_429"},
                    }
                }
            },
            "body": {"inline_string": text},
        }
    ]


def not_rate_limited() -> dict[str, Any]:
    """typed_per_filter_config of a route the per-call limit does not apply to."""
    return {
        RATE_LIMIT_FILTER: {
            "@type": T + "envoy.config.route.v3.FilterConfig",
            "config": {
                "@type": T + "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                "stat_prefix": "per_user_off",
            },
            "disabled": True,
        }
    }


def exempt_from_rate_limit(
    routes: list[dict[str, Any]], cfg: EdgeConfig, reflection_prefix: str
) -> list[dict[str, Any]]:
    """The routes with the per-call limit off where it does not belong: an
    exact-path route for each streaming RPC, before the prefix route that
    would take it (same target), and reflection (no token, so no user)."""
    if cfg.rate_limit_per_s <= 0:
        return routes
    out: list[dict[str, Any]] = []
    for route in routes:
        prefix = route["match"].get("prefix", "")
        if prefix == reflection_prefix:
            route = {**route, "typed_per_filter_config": not_rate_limited()}
        for path in STREAMING_METHODS:
            if prefix and prefix != "/" and path.startswith(prefix) and "route" in route:
                out.append(
                    {
                        "match": {"path": path},
                        "route": route["route"],
                        "typed_per_filter_config": not_rate_limited(),
                    }
                )
        out.append(route)
    return out


# --- TLS at the edge ---------------------------------------------------------


def _downstream_tls(cfg: EdgeConfig) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": T + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                # gRPC needs h2; http/1.1 for grpc-web from browsers
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": cfg.tls_cert_path},
                        "private_key": {"filename": cfg.tls_key_path},
                    }
                ],
            },
        },
    }


def _plaintext_refusal(cfg: EdgeConfig) -> dict[str, Any]:
    """What a cleartext client on the TLS port gets: an answer, not a reset."""
    text = (
        f"port {cfg.tls_port} speaks TLS only: connect with TLS "
        f"(grpcurl -cacert CA.pem), or use the cleartext port {cfg.port}"
    )
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": T
            + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "edge_tls_refused",
            "codec_type": "AUTO",
            "route_config": {
                "name": "tls_only",
                "virtual_hosts": [
                    {
                        "name": "tls_only",
                        "domains": ["*"],
                        "routes": [
                            {
                                "match": {"prefix": "/"},
                                # 400: gRPC clients read INTERNAL with this message
                                "direct_response": {
                                    "status": 400,
                                    "body": {"inline_string": text},
                                },
                            }
                        ],
                    }
                ],
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"},
                }
            ],
        },
    }


def tls_listeners(cfg: EdgeConfig, hcm: dict[str, Any]) -> list[dict[str, Any]]:
    """The TLS listener (none when `tls_port` is 0): the cleartext listener's
    HTTP pipeline `hcm` behind a TLS handshake."""
    if not cfg.tls_port:
        return []
    if not (cfg.tls_cert_path and cfg.tls_key_path):
        raise ValueError("a TLS port needs TLS_CERT_PATH and TLS_KEY_PATH")
    secured = {**hcm, "stat_prefix": "edge_tls"}
    return [
        {
            "name": "grpc_tls",
            "address": {"socket_address": {"address": cfg.listen_host, "port_value": cfg.tls_port}},
            "per_connection_buffer_limit_bytes": cfg.buffer_limit_bytes,
            "listener_filters": [
                {
                    "name": "envoy.filters.listener.tls_inspector",
                    "typed_config": {
                        "@type": T
                        + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
                    },
                }
            ],
            "filter_chains": [
                {
                    "name": "tls",
                    "filter_chain_match": {"transport_protocol": "tls"},
                    "transport_socket": _downstream_tls(cfg),
                    "filters": [
                        {
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": secured,
                        }
                    ],
                },
            ],
            "default_filter_chain": {"name": "cleartext", "filters": [_plaintext_refusal(cfg)]},
        }
    ]


# --- mTLS from Envoy to the backends -----------------------------------------


def upstream_tls(cfg: EdgeConfig) -> dict[str, Any]:
    """A backend cluster's transport socket under mTLS ({} without)."""
    if cfg.mesh_tls is None:
        return {}
    ca, cert, key = cfg.mesh_tls
    return {
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {
                    # gRPC to the backends: h2 over TLS needs ALPN
                    "alpn_protocols": ["h2"],
                    "tls_certificates": [
                        {"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}
                    ],
                    "validation_context": {"trusted_ca": {"filename": ca}},
                },
            },
        }
    }
