"""Optional mutual TLS inside the mesh (MESH_TLS=1; docs/edge.md).

Every backend then serves only TLS and asks for a client certificate signed
by MESH_TLS_CA_PATH; its callers (Envoy, the fan-out's calls to friend_svc
and location_svc) present MESH_TLS_CERT_PATH. One certificate may serve both
roles (the dev one from stack/certs.py does).
"""

from __future__ import annotations

from pathlib import Path

import grpc

from mesh.settings import Settings


def _files(settings: Settings) -> tuple[bytes, bytes, bytes] | None:
    if not settings.mesh_tls:
        return None
    paths = (settings.mesh_tls_ca_path, settings.mesh_tls_cert_path, settings.mesh_tls_key_path)
    if not all(paths):
        raise ValueError(
            "MESH_TLS=1 needs MESH_TLS_CA_PATH, MESH_TLS_CERT_PATH and MESH_TLS_KEY_PATH"
        )
    ca, cert, key = (Path(p).read_bytes() for p in paths)
    return ca, cert, key


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """mTLS for a backend's port (None: cleartext, the default)."""
    files = _files(settings)
    if files is None:
        return None
    ca, cert, key = files
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """mTLS for a call to another backend (None: cleartext)."""
    files = _files(settings)
    if files is None:
        return None
    ca, cert, key = files
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )
