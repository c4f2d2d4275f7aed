"""What `nearby run` adds for edge security (the launcher calls these):
dev TLS files, the dev JWKS served to Envoy by URL, their ports and banner.
"""

from __future__ import annotations

from pathlib import Path

from mesh.settings import Settings
from stack import certs, tokens
from stack.jwks_server import JwksServer


def _dev_jwks(settings: Settings) -> bool:
    """No issuer configured: the dev key signs, and its JWKS is served to Envoy."""
    return not settings.jwks_url and not settings.jwks_path


def wanted_ports(settings: Settings, listen: str) -> list[tuple[str, int, str, str]]:
    ports = []
    if settings.envoy_tls_port:
        ports.append((listen, settings.envoy_tls_port, "Envoy TLS listener", "set ENVOY_TLS_PORT"))
    if _dev_jwks(settings):
        ports.append(("127.0.0.1", settings.jwks_serve_port, "dev JWKS", "set JWKS_SERVE_PORT"))
    return ports


def secure(settings: Settings, home: Path) -> tuple[Settings, JwksServer | None]:
    """Settings with the dev TLS certificate (unless TLS_CERT_PATH is set) and
    the dev JWKS by URL (unless an issuer is configured); the JWKS server."""
    if settings.envoy_tls_port and not settings.tls_cert_path:
        dev = certs.load_or_create(home)
        settings = settings.replace(
            tls_cert_path=str(dev.server_cert), tls_key_path=str(dev.server_key)
        )
    if settings.mesh_tls and not settings.mesh_tls_cert_path:
        dev = certs.load_or_create(home)
        settings = settings.replace(
            mesh_tls_ca_path=str(dev.ca),
            mesh_tls_cert_path=str(dev.mesh_cert),
            mesh_tls_key_path=str(dev.mesh_key),
        )
    server = None
    if _dev_jwks(settings):
        key = tokens.load_or_create(home)
        server = JwksServer(key.jwks_path, "127.0.0.1", settings.jwks_serve_port).start()
        settings = settings.replace(jwks_url=server.url, jwks_path=str(key.jwks_path))
    return settings, server


def banner_lines(settings: Settings, host: str) -> list[str]:
    lines = []
    if settings.envoy_tls_port and settings.tls_cert_path:
        ca = Path(settings.tls_cert_path).with_name("ca.pem")  # the dev CA, if it is one
        hint = f"-cacert {ca}" if ca.exists() else "TLS_CERT_PATH"
        lines.append(f"  Envoy TLS     {host}:{settings.envoy_tls_port}  (h2 over TLS; {hint})")
    if settings.jwks_url:
        lines.append(
            f"  JWKS          {settings.jwks_url}  (Envoy refetches it every "
            f"{settings.jwks_cache_s:g} s; `nearby keys rotate`)"
        )
    return lines
