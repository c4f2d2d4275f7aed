"""The edge config is typed and current, and dev tokens are what Envoy expects."""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from google.protobuf import json_format

from mesh import identity
from mesh.identity import ADMIN_HEADER, USER_HEADER
from mesh.settings import Settings
from stack import envoy_config, tokens
from stack.edge import validate

ROOT = Path(__file__).resolve().parent.parent


def test_a_misspelt_field_fails_at_generation() -> None:
    doc = envoy_config.build(envoy_config.EdgeConfig())
    envoy_config.validate(doc)  # the real thing parses
    doc["static_resources"]["clusters"][0]["conect_timeout"] = "1s"
    with pytest.raises(json_format.ParseError, match="conect_timeout"):
        envoy_config.validate(doc)
    hcm_doc = envoy_config.build(envoy_config.EdgeConfig())
    listener = hcm_doc["static_resources"]["listeners"][0]
    listener["filter_chains"][0]["filters"][0]["typed_config"]["stream_idle_timout"] = "1s"
    with pytest.raises(json_format.ParseError, match="stream_idle_timout"):
        envoy_config.validate(hcm_doc)


def test_committed_config_is_fresh_and_envoy_accepts_it() -> None:
    # run the way the Makefile does: envoy/ (not the repo root) first on sys.path
    fresh = subprocess.run(
        [sys.executable, "envoy/generate.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    cwd = os.getcwd()
    os.chdir(ROOT)  # the committed config names its JWKS relative to the root
    try:
        ok, output = validate(Path("envoy/envoy.yaml"))
    finally:
        os.chdir(cwd)
    assert ok, output


def test_generate_check_fails_when_stale(tmp_path: Path) -> None:
    out = tmp_path / "envoy.yaml"
    out.write_text("# edited by hand\n")
    stale = subprocess.run(
        [sys.executable, "envoy/generate.py", "--check", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stale.returncode == 1
    assert "stale" in stale.stderr


def test_envoy_rejects_what_protobuf_types_allow(tmp_path: Path) -> None:
    """Value constraints (PGV) are only checked by Envoy: the reason for validate."""
    cfg = envoy_config.EdgeConfig(jwks_path=str(tmp_path / "missing-jwks.json"))
    path = envoy_config.write(cfg, tmp_path / "envoy.yaml")
    ok, output = validate(path)
    assert not ok
    assert "missing-jwks.json" in output


def test_config_from_settings_routes_every_public_service() -> None:
    settings = Settings(fanout_port=6000, fanout_replicas=3, nearby_home="/srv/nearby")
    cfg = envoy_config.from_settings(settings)
    assert cfg.fanout == ("127.0.0.1:6000", "127.0.0.1:6001", "127.0.0.1:6002")
    assert cfg.jwks_path == "/srv/nearby/jwks.json"
    doc = envoy_config.build(cfg)
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    prefixes = {r["match"]["prefix"]: r["route"] for r in routes if "route" in r}
    assert set(prefixes) == {
        "/nearby.v1.FriendService/",
        "/nearby.v1.LocationService/",
        "/nearby.v1.PresenceService/",
        "/nearby.v1.NearbyService/",
        "/grpc.reflection.",
    }
    assert all(r["timeout"] == "0s" for r in prefixes.values())
    assert not any("internal" in p for p in prefixes)
    filters = [f["name"] for f in hcm["typed_config"]["http_filters"]]
    assert filters.index("envoy.filters.http.header_mutation") < filters.index(
        "envoy.filters.http.jwt_authn"
    )
    assert doc["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_dev_key_is_created_once_private_and_signs_verifiable_tokens(tmp_path: Path) -> None:
    key = tokens.load_or_create(tmp_path)
    again = tokens.load_or_create(tmp_path)
    assert again.kid == key.kid
    assert stat.S_IMODE((tmp_path / tokens.KEY_FILE).stat().st_mode) == 0o600
    jwks = json.loads(key.jwks_path.read_text())
    assert "d" not in jwks["keys"][0]  # public half only
    token = key.sign("alice", issuer="iss-x", audience="aud-y", admin=True, ttl_s=60)
    public = jwt.PyJWK(jwks["keys"][0]).key
    claims = jwt.decode(token, public, algorithms=["ES256"], audience="aud-y", issuer="iss-x")
    assert claims["sub"] == "alice"
    assert claims["admin"] is True
    assert claims["exp"] - claims["iat"] == 60
    plain = jwt.decode(
        key.sign("bob", issuer="iss-x", audience="aud-y"),
        public,
        algorithms=["ES256"],
        audience="aud-y",
    )
    assert "admin" not in plain


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("2d", 172800)]
)
def test_parse_ttl(text: str, seconds: float) -> None:
    assert tokens.parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "-1h", "1w", "soon"])
def test_parse_ttl_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="--ttl"):
        tokens.parse_ttl(text)


def test_nearby_token_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NEARBY_HOME", str(tmp_path))
    monkeypatch.setenv("JWKS_PATH", "")
    args = argparse.Namespace(user_id="carol", admin=False, ttl="10m")
    assert tokens.main(args) == 0
    token = capsys.readouterr().out.strip()
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert header["kid"] == tokens.load_or_create(tmp_path).kid
    assert claims["sub"] == "carol"
    assert claims["iss"] == Settings().jwt_issuer
    assert claims["aud"] == Settings().jwt_audience
    bad = argparse.Namespace(user_id="not a user id", admin=False, ttl="1h")
    assert tokens.main(bad) == 2
    assert "user id" in capsys.readouterr().err


def test_nearby_token_imports_only_what_it_uses(tmp_path: Path) -> None:
    """stack/cli.py imports a subcommand's module only when that subcommand runs."""
    probe = (
        "import sys\n"
        "from stack import cli\n"
        "assert cli.main(['token', 'dora']) == 0\n"
        "heavy = ('stack.launcher', 'stack.watch', 'bench.sim', 'rich')\n"
        "print(sorted(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
    )
    env = {**os.environ, "NEARBY_HOME": str(tmp_path), "JWKS_PATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "[]"
    assert jwt.decode(done.stdout.strip(), options={"verify_signature": False})["sub"] == "dora"


def _identity_headers() -> set[str]:
    """Every header a backend takes as the caller's identity (mesh/identity.py)."""
    return {getattr(identity, n) for n in identity.__all__ if n.endswith("_HEADER")}


def _stripped_before_jwt_authn(hcm: dict[str, Any]) -> set[str]:
    """Headers the listener removes from a client's request before jwt_authn runs
    (removing them later would also remove the ones jwt_authn set)."""
    removed: set[str] = set()
    for f in hcm["http_filters"]:
        if f["name"] == "envoy.filters.http.jwt_authn":
            return removed
        if f["name"] == "envoy.filters.http.header_mutation":
            mutations = f["typed_config"].get("mutations", {})
            removed |= {m["remove"].lower() for m in mutations.get("request_mutations", [])}
    raise AssertionError("no jwt_authn filter: who sets the identity headers?")


@pytest.mark.parametrize("source", ["generated", "committed"])
def test_the_edge_strips_every_client_sent_identity_header_itself(source: str) -> None:
    """The project's own rule, seen in the config: jwt_authn happens to drop the
    headers it sets from claims too, which hides a missing rule from a test
    through Envoy."""
    if source == "generated":
        doc = envoy_config.build(envoy_config.from_settings(Settings()))
    else:
        doc = yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text())
    listeners = doc["static_resources"]["listeners"]
    assert listeners
    for listener in listeners:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                hcm = network_filter["typed_config"]
                jwt = next(f for f in hcm["http_filters"] if "jwt_authn" in f["name"])
                set_from_claims = {
                    c["header_name"].lower()
                    for p in jwt["typed_config"]["providers"].values()
                    for c in p.get("claim_to_headers", [])
                }
                identity_headers = _identity_headers() | set_from_claims
                assert {USER_HEADER, ADMIN_HEADER} <= identity_headers
                missing = identity_headers - _stripped_before_jwt_authn(hcm)
                assert not missing, f"{listener['name']}: a client could send {missing}"
                # and no route turns the stripping off
                for host in hcm["route_config"]["virtual_hosts"]:
                    for scope in [host, *host["routes"]]:
                        per_filter = scope.get("typed_per_filter_config", {})
                        assert "envoy.filters.http.header_mutation" not in per_filter
