"""Typed settings of the whole mesh, read once from environment variables.

Every variable has a local default, so `make run` works with no configuration.
Each field's metadata names its variable and says what it does; the README's
configuration table is checked against this class by the test suite.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_BOOLS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _env(name: str, doc: str) -> dict[str, str]:
    return {"env": name, "doc": doc}


@dataclass(frozen=True, slots=True)
class Settings:
    """Configuration shared by every service of the mesh."""

    # --- infrastructure -------------------------------------------------
    redis_url: str = field(
        default="redis://127.0.0.1:6379/0",
        metadata=_env("REDIS_URL", "Redis for the location cache, presence and pub/sub"),
    )
    redis_cluster: bool = field(
        default=False,
        metadata=_env(
            "REDIS_CLUSTER",
            "1: REDIS_URL names a seed node of a Redis Cluster (sharded pub/sub); 0: one Redis",
        ),
    )
    redis_retry_s: float = field(
        default=2.0,
        metadata=_env(
            "REDIS_RETRY_S",
            "How long a Redis command is retried through LOADING, TRYAGAIN (resharding) and "
            "CLUSTERDOWN (failover) before it fails (UNAVAILABLE)",
        ),
    )
    database_url: str = field(
        default="postgresql://postgres@127.0.0.1:5432/nearby",
        metadata=_env("DATABASE_URL", "Postgres for users, friendships and location history"),
    )
    postgres_wait_s: float = field(
        default=2.0,
        metadata=_env(
            "POSTGRES_WAIT_S",
            "A call waits this long for a Postgres connection, then answers UNAVAILABLE",
        ),
    )
    # --- faults: starting while a store is down ------------------------
    startup_wait_s: float = field(
        default=30.0,
        metadata=_env(
            "STARTUP_WAIT_S",
            "A service started while Redis or Postgres is unreachable waits this long for it "
            "(one log line), then exits",
        ),
    )
    bind_host: str = field(
        default="127.0.0.1",
        metadata=_env("BIND_HOST", "Interface the backends listen on (loopback by default)"),
    )
    log_level: str = field(default="INFO", metadata=_env("LOG_LEVEL", "Log level (JSON logs)"))
    # --- ports of the backends (gRPC) and of their /metrics -------------
    friend_port: int = field(default=50051, metadata=_env("FRIEND_PORT", "friend_svc gRPC port"))
    location_port: int = field(
        default=50052, metadata=_env("LOCATION_PORT", "location_svc gRPC port")
    )
    presence_port: int = field(
        default=50053, metadata=_env("PRESENCE_PORT", "presence_svc gRPC port")
    )
    fanout_port: int = field(
        default=50054,
        metadata=_env("FANOUT_PORT", "gRPC port of the first fan-out replica (next ones: +1, +2…)"),
    )
    metrics_port: int = field(
        default=0,
        metadata=_env(
            "METRICS_PORT", "Prometheus /metrics port of this process (0: gRPC port+1000)"
        ),
    )
    # --- addresses of the other services (service-to-service calls) -----
    friend_addr: str = field(
        default="127.0.0.1:50051", metadata=_env("FRIEND_ADDR", "Where to reach friend_svc")
    )
    location_addr: str = field(
        default="127.0.0.1:50052", metadata=_env("LOCATION_ADDR", "Where to reach location_svc")
    )
    presence_addr: str = field(
        default="127.0.0.1:50053", metadata=_env("PRESENCE_ADDR", "Where to reach presence_svc")
    )
    # --- the edge (Envoy) and the local stack ---------------------------
    envoy_port: int = field(
        default=8080, metadata=_env("ENVOY_PORT", "Envoy's gRPC listener for clients")
    )
    envoy_admin_port: int = field(
        default=9901, metadata=_env("ENVOY_ADMIN_PORT", "Envoy's admin interface (loopback only)")
    )
    fanout_replicas: int = field(
        default=0,
        metadata=_env("FANOUT_REPLICAS", "Fan-out processes `nearby run` starts (0: one per core)"),
    )
    jwt_issuer: str = field(
        default="nearby-dev", metadata=_env("JWT_ISSUER", "`iss` Envoy requires in access tokens")
    )
    jwt_audience: str = field(
        default="nearby", metadata=_env("JWT_AUDIENCE", "`aud` Envoy requires in access tokens")
    )
    jwks_path: str = field(
        default="",
        metadata=_env(
            "JWKS_PATH", "JWKS file of the token issuer (empty: the dev key in NEARBY_HOME)"
        ),
    )
    stream_idle_timeout_s: float = field(
        default=300.0,
        metadata=_env("STREAM_IDLE_TIMEOUT_S", "Envoy ends a stream silent this long"),
    )
    nearby_home: str = field(
        default=".nearby",
        metadata=_env("NEARBY_HOME", "Local state: dev signing key, private Redis/Postgres, logs"),
    )
    # --- behaviour ------------------------------------------------------
    shutdown_grace_s: float = field(
        default=10.0,
        metadata=_env("SHUTDOWN_GRACE_S", "Seconds in-flight calls get to finish on SIGTERM"),
    )
    friend_cap: int = field(
        default=5000, metadata=_env("FRIEND_CAP", "Maximum number of friends per user")
    )
    inactivity_timeout_s: float = field(
        default=600.0,
        metadata=_env("INACTIVITY_TIMEOUT_S", "A user silent this long is offline (cache TTL)"),
    )
    min_report_interval_s: float = field(
        default=1.0,
        metadata=_env("MIN_REPORT_INTERVAL_S", "Reports closer together are coalesced"),
    )
    max_clock_skew_s: float = field(
        default=10.0,
        metadata=_env("MAX_CLOCK_SKEW_S", "How far in the future a report's timestamp may be"),
    )
    history_retention_days: int = field(
        default=30, metadata=_env("HISTORY_RETENTION_DAYS", "Days of location history kept")
    )
    history_buffer_max: int = field(
        default=1_000_000,
        metadata=_env("HISTORY_BUFFER_MAX", "Bound of the durable history buffer (entries)"),
    )
    history_batch_size: int = field(
        default=5000, metadata=_env("HISTORY_BATCH_SIZE", "Rows per history COPY batch")
    )
    history_claim_idle_s: float = field(
        default=30.0,
        metadata=_env(
            "HISTORY_CLAIM_IDLE_S",
            "History entries unacknowledged this long are reclaimed from a dead writer",
        ),
    )
    history_wait_replicas: int = field(
        default=-1,
        metadata=_env(
            "HISTORY_WAIT_REPLICAS",
            "Replicas that must confirm history entries (WAIT) before a report is answered "
            "(-1: 1 on a cluster whose masters have replicas, else 0)",
        ),
    )
    history_wait_timeout_ms: int = field(
        default=100,
        metadata=_env(
            "HISTORY_WAIT_TIMEOUT_MS",
            "How long a report waits for those replicas; then it is answered anyway "
            "(counted in location_history_unreplicated_total)",
        ),
    )
    presence_sweep_interval_s: float = field(
        default=1.0,
        metadata=_env(
            "PRESENCE_SWEEP_INTERVAL_S", "How often presence looks for users past the timeout"
        ),
    )
    nearby_radius_m: float = field(
        default=8047.0, metadata=_env("NEARBY_RADIUS_M", "Nearby radius in metres (5 miles)")
    )
    nearby_hysteresis_m: float = field(
        default=200.0,
        metadata=_env("NEARBY_HYSTERESIS_M", "A nearby friend leaves only beyond radius + this"),
    )
    nearby_page_size: int = field(
        default=20, metadata=_env("NEARBY_PAGE_SIZE", "Default page size of the nearby list")
    )
    fanout_flush_ms: float = field(
        default=5.0,
        metadata=_env("FANOUT_FLUSH_MS", "Window in which a stream's pending updates are batched"),
    )
    fanout_queue_max: int = field(
        default=1000,
        metadata=_env("FANOUT_QUEUE_MAX", "Pending friends per stream before it must reconnect"),
    )
    fanout_stall_s: float = field(
        default=10.0,
        metadata=_env(
            "FANOUT_STALL_S",
            "A stream whose client accepts no data for this long is ended (must reconnect)",
        ),
    )
    heartbeat_s: float = field(
        default=30.0,
        metadata=_env("HEARTBEAT_S", "Idle streams get a heartbeat message this often"),
    )
    drain_s: float = field(
        default=5.0,
        metadata=_env("DRAIN_S", "Fan-out drain: clients are told to reconnect over this many s"),
    )

    # --- observability: tracing (OpenTelemetry; the standard OTEL_* variables) ---
    otlp_endpoint: str = field(
        default="",
        metadata=_env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTLP/gRPC collector traces are sent to, e.g. http://127.0.0.1:4317 (empty: tracing "
            "off; Envoy joins the trace when `nearby run` sees it)",
        ),
    )
    traces_sampler: str = field(
        default="parentbased_traceidratio",
        metadata=_env(
            "OTEL_TRACES_SAMPLER",
            "always_on, always_off, traceidratio or their parentbased_ forms (a traced caller's "
            "decision is kept)",
        ),
    )
    traces_sampler_arg: float = field(
        default=1.0,
        metadata=_env(
            "OTEL_TRACES_SAMPLER_ARG", "Share of new traces sampled by the traceidratio samplers"
        ),
    )
    # --- edge security: token expiry, caps, rate limits, TLS, JWKS (docs/edge.md)
    jwt_clock_skew_s: int = field(
        default=5,
        metadata=_env(
            "JWT_CLOCK_SKEW_S",
            "Leeway Envoy allows on a token's exp/nbf when a call opens (Envoy's default: 60)",
        ),
    )
    token_refresh_margin_s: float = field(
        default=30.0,
        metadata=_env(
            "TOKEN_REFRESH_MARGIN_S",
            "A stream gets Reconnect this long before its token expires (at most half the "
            "token's remaining life); at exp it ends with UNAUTHENTICATED",
        ),
    )
    streams_per_user: int = field(
        default=5,
        metadata=_env(
            "STREAMS_PER_USER",
            "Concurrent streams one user may hold over all fan-out replicas; the next one is "
            "refused with RESOURCE_EXHAUSTED (0: no cap)",
        ),
    )
    stream_lease_s: float = field(
        default=30.0,
        metadata=_env(
            "STREAM_LEASE_S",
            "A stream's slot in Redis expires unless its replica renews it (a crashed "
            "replica's slots free themselves within this)",
        ),
    )
    rate_limit_per_s: float = field(
        default=20.0,
        metadata=_env(
            "RATE_LIMIT_PER_S",
            "Unary calls per second one user may make through each Envoy (0: no limit)",
        ),
    )
    rate_limit_burst: int = field(
        default=40,
        metadata=_env("RATE_LIMIT_BURST", "Unary calls one user may make at once (bucket size)"),
    )
    envoy_tls_port: int = field(
        default=8443,
        metadata=_env("ENVOY_TLS_PORT", "Envoy's TLS listener for clients (h2/ALPN; 0: off)"),
    )
    tls_cert_path: str = field(
        default="",
        metadata=_env(
            "TLS_CERT_PATH",
            "Certificate chain (PEM) of the TLS listener (empty: a dev CA's in NEARBY_HOME)",
        ),
    )
    tls_key_path: str = field(
        default="",
        metadata=_env("TLS_KEY_PATH", "Private key (PEM) of TLS_CERT_PATH"),
    )
    jwks_url: str = field(
        default="",
        metadata=_env(
            "JWKS_URL",
            "The issuer's JWKS by URL (Envoy remote_jwks, refetched every JWKS_CACHE_S); "
            "overrides JWKS_PATH",
        ),
    )
    jwks_cache_s: float = field(
        default=30.0,
        metadata=_env(
            "JWKS_CACHE_S", "How long Envoy keeps a fetched JWKS (a new key is seen within this)"
        ),
    )
    jwks_serve_port: int = field(
        default=9902,
        metadata=_env(
            "JWKS_SERVE_PORT",
            "`nearby run` serves the dev JWKS on loopback here, for Envoy's remote_jwks",
        ),
    )
    mesh_tls: bool = field(
        default=False,
        metadata=_env(
            "MESH_TLS",
            "1: backends require mutual TLS (Envoy and fan-out present MESH_TLS_CERT)",
        ),
    )
    mesh_tls_ca_path: str = field(
        default="",
        metadata=_env("MESH_TLS_CA_PATH", "CA (PEM) of the mesh's mTLS (empty: the dev CA)"),
    )
    mesh_tls_cert_path: str = field(
        default="",
        metadata=_env(
            "MESH_TLS_CERT_PATH", "Certificate (PEM) a mesh peer presents (empty: the dev one)"
        ),
    )
    mesh_tls_key_path: str = field(
        default="",
        metadata=_env("MESH_TLS_KEY_PATH", "Private key (PEM) of MESH_TLS_CERT_PATH"),
    )
    # --- browsers: CORS at the edge, dev mode (dev login, map page) ---------
    cors_allowed_origins: str = field(
        default="",
        metadata=_env(
            "CORS_ALLOWED_ORIGINS",
            "Browser origins Envoy grants CORS, comma-separated and exact, e.g. "
            "https://app.example.com (empty: none; dev mode adds the map page's)",
        ),
    )
    dev_mode: bool = field(
        default=False,
        metadata=_env(
            "DEV_MODE",
            "1: a development stack (`nearby run --dev`, `make run`): Envoy serves POST "
            "/dev/token (dev login) and grants CORS to the map page; refused with JWKS_PATH set",
        ),
    )
    dev_token_port: int = field(
        default=50050,
        metadata=_env("DEV_TOKEN_PORT", "Loopback port of the dev-token server (dev mode only)"),
    )
    map_port: int = field(
        default=8081,
        metadata=_env(
            "MAP_PORT",
            "Port of the map page in dev mode; http://localhost:PORT and http://127.0.0.1:PORT "
            "are then allowed origins",
        ),
    )

    # --- clients: the dev map page (web/) ------------------------------------
    map_tile_url: str = field(
        default="",
        metadata=_env(
            "MAP_TILE_URL",
            "Map tiles under the dev map page, a URL template with {z}/{x}/{y} "
            "(empty: no tiles, a plain plot; the page fetches them from the browser)",
        ),
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every field from its variable (falling back to the default)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            kind: type[Any] = type(f.default)
            if kind is bool:
                flag = raw.strip().lower()
                if flag not in _BOOLS:
                    raise ValueError(f"{f.metadata['env']}={raw!r} is not a valid bool (1 or 0)")
                values[f.name] = _BOOLS[flag]
                continue
            try:
                values[f.name] = kind(raw)
            except ValueError as exc:
                raise ValueError(
                    f"{f.metadata['env']}={raw!r} is not a valid {kind.__name__}"
                ) from exc
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def documented_variables() -> list[tuple[str, str, str]]:
    """(variable, default, description) of every setting, for docs."""
    return [
        (f.metadata["env"], str(f.default), f.metadata["doc"]) for f in dataclasses.fields(Settings)
    ]
