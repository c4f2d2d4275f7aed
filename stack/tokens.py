"""`nearby token USER_ID [--admin] [--ttl 1h]`: a JWT the local Envoy accepts.

Development only. The signing key (EC P-256, ES256) is created on first use in
NEARBY_HOME (`.nearby/` in the checkout's root, gitignored; see stack/paths.py)
next to its public JWKS, which `nearby run` hands to Envoy. In production nothing here is used: Envoy is pointed at
the real issuer's JWKS (JWKS_PATH, JWT_ISSUER, JWT_AUDIENCE; see docs/edge.md).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from mesh.identity import USER_ID_RE
from mesh.settings import Settings
from stack import paths

KEY_FILE = "dev-signing-key.pem"
JWKS_FILE = "jwks.json"
RETIRED_FILE = "dev-retired-keys.json"
"""Public halves of keys replaced by `rotate`, still in the JWKS until `drop_retired`."""
ALGORITHM = "ES256"

_TTL_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> float:
    """'90', '90s', '15m', '1h', '7d' -> seconds."""
    m = _TTL_RE.match(text.strip().lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"--ttl {text!r}: use a positive duration such as 90s, 15m, 1h or 7d")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


@dataclass(frozen=True)
class SigningKey:
    """A private key and its JWKS (public half), both on disk."""

    private_key: ec.EllipticCurvePrivateKey
    kid: str
    jwks_path: Path

    def sign(
        self,
        user_id: str,
        *,
        issuer: str,
        audience: str,
        admin: bool = False,
        ttl_s: float = 3600.0,
        now: float | None = None,
    ) -> str:
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iss": issuer,
            "aud": audience,
            "sub": user_id,
            "iat": issued,
            "exp": issued + int(ttl_s),
        }
        if admin:
            claims["admin"] = True
        return jwt.encode(claims, self.private_key, algorithm=ALGORITHM, headers={"kid": self.kid})


def _kid(public: ec.EllipticCurvePublicKey) -> str:
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()[:12]).decode().rstrip("=")


def jwk_of(public: ec.EllipticCurvePublicKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(public))
    jwk.update(kid=kid, alg=ALGORITHM, use="sig")
    return jwk


def jwks_of(public: ec.EllipticCurvePublicKey, kid: str) -> dict[str, Any]:
    return {"keys": [jwk_of(public, kid)]}


def _retired(home: Path) -> list[dict[str, Any]]:
    path = home / RETIRED_FILE
    if not path.exists():
        return []
    keys: list[dict[str, Any]] = json.loads(path.read_text())["keys"]
    return keys


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def load_or_create(home: Path) -> SigningKey:
    """The dev key in `home`, created on first use (private key mode 0600)."""
    home.mkdir(parents=True, exist_ok=True)
    key_path = home / KEY_FILE
    if not key_path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # O_EXCL: when two processes race on first use, one key wins for both
        with contextlib.suppress(FileExistsError):
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
    loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} is not an EC private key: delete it to get a new one")
    kid = _kid(loaded.public_key())
    jwks_path = home / JWKS_FILE
    # the current key first, then retired ones (tokens they signed still pass)
    current = jwk_of(loaded.public_key(), kid)
    doc = {"keys": [current, *(k for k in _retired(home) if k.get("kid") != kid)]}
    jwks = json.dumps(doc, indent=2).encode()
    if not jwks_path.exists() or jwks_path.read_bytes() != jwks:
        write_atomic(jwks_path, jwks, 0o644)
    return SigningKey(loaded, kid, jwks_path)


def rotate(home: Path) -> SigningKey:
    """A new signing key; the old one's public half stays in the JWKS (tokens
    it signed keep working) until `drop_retired`."""
    old = load_or_create(home)
    retired = [k for k in _retired(home) if k.get("kid") != old.kid]
    retired.append(jwk_of(old.private_key.public_key(), old.kid))
    write_atomic(home / RETIRED_FILE, json.dumps({"keys": retired}, indent=2).encode(), 0o644)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(home / KEY_FILE, pem, 0o600)
    return load_or_create(home)


def drop_retired(home: Path) -> SigningKey:
    """Remove the retired keys from the JWKS: tokens they signed are refused
    once Envoy has refetched it."""
    (home / RETIRED_FILE).unlink(missing_ok=True)
    return load_or_create(home)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user_id", help="the token's subject (the user id the backends see)")
    parser.add_argument(
        "--admin", action="store_true", help="add the admin claim (needed by CreateUser)"
    )
    parser.add_argument("--ttl", default="1h", help="lifetime, e.g. 90s, 15m, 1h, 7d (default 1h)")


def main(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if not USER_ID_RE.match(args.user_id):
        print(
            f"nearby token: user id {args.user_id!r} must be 1-64 of [A-Za-z0-9._-]",
            file=sys.stderr,
        )
        return 2
    try:
        ttl_s = parse_ttl(args.ttl)
    except ValueError as exc:
        print(f"nearby token: {exc}", file=sys.stderr)
        return 2
    key = load_or_create(paths.home(settings))
    if settings.jwks_path and Path(settings.jwks_path).resolve() != key.jwks_path.resolve():
        print(
            f"nearby token: note: JWKS_PATH={settings.jwks_path} is set, so an Envoy started "
            "with it will not accept this dev token",
            file=sys.stderr,
        )
    print(
        key.sign(
            args.user_id,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            admin=args.admin,
            ttl_s=ttl_s,
        )
    )
    return 0
