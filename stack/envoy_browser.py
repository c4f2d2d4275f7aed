"""The browser parts of the Envoy edge (stack/envoy_config.py assembles them).

- `connect_grpc_bridge`: the Connect protocol (connect-web's default) to gRPC,
  next to `grpc_web`. Binary protobuf only: the backends speak no JSON codec.
- `cors`: the filter and one policy for the virtual host, granting exactly the
  configured origins (CORS_ALLOWED_ORIGINS; none by default, and dev mode adds
  the map page's). A preflight from any other origin is answered by Envoy
  itself, without a grant, never forwarded to a backend.
- Connect's JSON codec is refused at the edge (415, Connect's JSON error
  shape): the backends would read a JSON body as protobuf and fail.
- Dev mode only: the route `POST /dev/token` to the launcher's dev-token
  server (stack/devtoken.py), open without a token.

See docs/edge.md ("Browsers").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# imported for their types in the descriptor pool (Any fields of the config)
from envoy.extensions.filters.http.connect_grpc_bridge.v3 import (  # noqa: F401
    config_pb2 as connect_grpc_bridge_pb2,
)
from envoy.extensions.filters.http.cors.v3 import cors_pb2  # noqa: F401

from mesh.settings import Settings

T = "type.googleapis.com/"
CORS_FILTER = "envoy.filters.http.cors"
DEV_TOKEN_PATH = "/dev/token"
DEV_TOKEN_CLUSTER = "dev_token"

#: what grpc-web and Connect clients send: the token, the protocols' own headers
ALLOW_HEADERS = (
    "authorization",
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "connect-protocol-version",
    "connect-timeout-ms",
    "connect-accept-encoding",
    "connect-content-encoding",
)
#: what they must read: a trailers-only grpc-web error carries its status in headers
EXPOSE_HEADERS = ("grpc-status", "grpc-message", "grpc-status-details-bin")


def filters() -> list[dict[str, Any]]:
    """The CORS filter (first: a preflight is answered before anything else),
    then the Connect bridge (next to grpc_web, before identity and auth)."""
    return [
        {
            "name": CORS_FILTER,
            "typed_config": {"@type": T + "envoy.extensions.filters.http.cors.v3.Cors"},
        },
        {
            "name": "envoy.filters.http.connect_grpc_bridge",
            "typed_config": {
                "@type": T + "envoy.extensions.filters.http.connect_grpc_bridge.v3.FilterConfig"
            },
        },
    ]


def cors_policy(origins: Sequence[str]) -> dict[str, Any]:
    """The virtual host's policy: exactly these origins; none when empty."""
    return {
        CORS_FILTER: {
            "@type": T + "envoy.extensions.filters.http.cors.v3.CorsPolicy",
            "allow_origin_string_match": [{"exact": o} for o in origins],
            "allow_methods": "GET, POST, OPTIONS",
            "allow_headers": ", ".join(ALLOW_HEADERS),
            "expose_headers": ", ".join(EXPOSE_HEADERS),
            "max_age": "600",
            # a preflight from an origin not granted ends at Envoy
            "forward_not_matching_preflights": False,
        }
    }


JSON_REFUSED = (
    '{"code":"invalid_argument","message":"this API speaks binary protobuf only: send '
    "application/proto (Connect unary), application/connect+proto (Connect streams) or "
    'grpc-web (connect-web: createConnectTransport({useBinaryFormat: true}))"}'
)


def json_refusal_routes(prefix: str) -> list[dict[str, Any]]:
    """The Connect protocol's JSON codec would reach the backends as gRPC with
    a JSON body they cannot parse (UNKNOWN, HTTP 500): refuse it at the edge,
    in Connect's error shape, saying what to send instead. (Envoy's CORS filter
    skips direct responses, so a page's script cannot read this reply; its
    network panel shows it.)"""
    return [
        {
            "match": {
                "prefix": prefix,
                "headers": [{"name": "content-type", "string_match": {"prefix": content_type}}],
            },
            "direct_response": {"status": 415, "body": {"inline_string": JSON_REFUSED}},
            "response_headers_to_add": [
                {"header": {"key": "content-type", "value": "application/json"}}
            ],
        }
        for content_type in ("application/json", "application/connect+json")
    ]


def dev_token_route() -> dict[str, Any]:
    return {
        "match": {"path": DEV_TOKEN_PATH},
        "route": {"cluster": DEV_TOKEN_CLUSTER, "timeout": "10s"},
    }


def dev_token_jwt_rule() -> dict[str, Any]:
    """The dev login is how a page gets its first token: none is required."""
    return {"match": {"path": DEV_TOKEN_PATH}}


def dev_token_cluster(host: str, port: int, connect_timeout: str) -> dict[str, Any]:
    """The launcher's dev-token server: plain HTTP/1.1 on loopback."""
    return {
        "name": DEV_TOKEN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "load_assignment": {
            "cluster_name": DEV_TOKEN_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": host, "port_value": port}}
                            }
                        }
                    ]
                }
            ],
        },
    }


def parse_origins(text: str) -> list[str]:
    """CORS_ALLOWED_ORIGINS: comma-separated origins, each scheme://host[:port]."""
    origins = []
    for raw in text.split(","):
        origin = raw.strip()
        if not origin:
            continue
        scheme, sep, rest = origin.partition("://")
        if scheme not in ("http", "https") or not sep or not rest or "/" in rest or origin == "*":
            raise ValueError(
                f"CORS_ALLOWED_ORIGINS: {origin!r} is not an origin: write it as the browser "
                "sends it, scheme://host[:port] with no path (e.g. https://app.example.com)"
            )
        origins.append(origin)
    return origins


def map_origins(settings: Settings) -> list[str]:
    """The dev map page's origins (the same page by either loopback name)."""
    return [f"http://localhost:{settings.map_port}", f"http://127.0.0.1:{settings.map_port}"]


def origins(settings: Settings) -> list[str]:
    """The allowed origins of a stack configured by `settings`."""
    found = parse_origins(settings.cors_allowed_origins)
    if settings.dev_mode:
        found += [o for o in map_origins(settings) if o not in found]
    return found
