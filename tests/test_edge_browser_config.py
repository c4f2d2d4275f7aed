"""The browser parts of the generated edge config, without running Envoy: CORS
origins, the dev login only in dev mode, the launcher's refusal of dev mode
next to a real issuer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mesh.settings import Settings
from stack import envoy_browser, envoy_config, launcher

ROOT = Path(__file__).resolve().parent.parent


def _hcm(cfg: envoy_config.EdgeConfig) -> dict[str, Any]:
    doc = envoy_config.build(cfg)
    envoy_config.validate(doc)  # every field is one Envoy knows
    hcm: dict[str, Any] = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]
    return hcm


def _dev_parts(settings: Settings) -> tuple[list[Any], list[Any], list[str], list[str]]:
    cfg = envoy_config.from_settings(settings)
    hcm = _hcm(cfg)
    vhost = hcm["route_config"]["virtual_hosts"][0]
    routes = [r for r in vhost["routes"] if r["match"].get("path") == "/dev/token"]
    jwt = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.jwt_authn")
    rules = [r for r in jwt["typed_config"]["rules"] if r["match"].get("path") == "/dev/token"]
    clusters = [c["name"] for c in envoy_config.build(cfg)["static_resources"]["clusters"]]
    policy = vhost["typed_per_filter_config"][envoy_browser.CORS_FILTER]
    origins = [m["exact"] for m in policy["allow_origin_string_match"]]
    return routes, rules, clusters, origins


def test_outside_dev_mode_no_dev_login_and_no_origin() -> None:
    routes, rules, clusters, origins = _dev_parts(Settings())
    assert routes == [] and rules == []
    assert envoy_browser.DEV_TOKEN_CLUSTER not in clusters
    assert origins == []  # no browser origin is granted by default


def test_dev_mode_routes_the_dev_login_and_allows_the_map_page() -> None:
    settings = Settings(
        dev_mode=True,
        dev_token_port=7001,
        map_port=7002,
        cors_allowed_origins="https://app.example.com",
    )
    routes, rules, clusters, origins = _dev_parts(settings)
    assert routes[0]["route"]["cluster"] == envoy_browser.DEV_TOKEN_CLUSTER
    assert rules == [{"match": {"path": "/dev/token"}}]  # no token needed to get one
    assert envoy_browser.DEV_TOKEN_CLUSTER in clusters
    assert origins == [
        "https://app.example.com",
        "http://localhost:7002",
        "http://127.0.0.1:7002",
    ]


def test_filters_in_order_and_watch_routed_like_connect() -> None:
    hcm = _hcm(envoy_config.EdgeConfig())
    names = [f["name"] for f in hcm["http_filters"]]
    assert names.index("envoy.filters.http.cors") == 0
    assert names.index("envoy.filters.http.connect_grpc_bridge") < names.index(
        "envoy.filters.http.jwt_authn"
    )
    # Watch and Connect share the fan-out's route: no route timeout (streams)
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    fanout = next(r for r in routes if r["match"].get("prefix") == "/nearby.v1.NearbyService/")
    assert fanout["route"]["cluster"] == "fanout_svc" and fanout["route"]["timeout"] == "0s"


def test_origins_must_be_origins() -> None:
    assert envoy_browser.parse_origins(" https://a.example , http://b.example:8080,") == [
        "https://a.example",
        "http://b.example:8080",
    ]
    for bad in ("*", "a.example", "https://a.example/app", "ftp://a.example"):
        with pytest.raises(ValueError, match="scheme://host"):
            envoy_browser.parse_origins(bad)


def test_launcher_refuses_dev_mode_next_to_a_real_issuer() -> None:
    launcher.check_dev(Settings(dev_mode=True))  # the dev key: fine
    launcher.check_dev(Settings(jwks_path="/etc/nearby/jwks.json"))  # not dev: fine
    with pytest.raises(launcher.StartError, match="JWKS_PATH"):
        launcher.check_dev(Settings(dev_mode=True, jwks_path="/etc/nearby/jwks.json"))
    with pytest.raises(launcher.StartError, match="CORS_ALLOWED_ORIGINS"):
        launcher.check_dev(Settings(cors_allowed_origins="*"))


def test_rendered_production_config_grants_its_origins_and_refuses_dev_mode(
    tmp_path: Path,
) -> None:
    out = tmp_path / "envoy.yaml"
    env = {**os.environ, "CORS_ALLOWED_ORIGINS": "https://app.example.com", "DEV_MODE": ""}
    cmd = [sys.executable, "envoy/generate.py", "--from-env", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "exact: https://app.example.com" in text and "/dev/token" not in text
    env["DEV_MODE"] = "1"
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "nearby run --dev" in done.stderr
