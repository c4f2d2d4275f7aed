"""`nearby keys rotate|drop-retired|show`: rotate the dev signing key.

`rotate` makes a new signing key (new tokens use it) and keeps the old public
key in the JWKS, so tokens already out keep working; `drop-retired` removes
the old keys, so their tokens stop working. `nearby run` serves the JWKS to
Envoy over loopback HTTP (remote_jwks), so both take effect without a restart,
within JWKS_CACHE_S (docs/edge.md).
"""

from __future__ import annotations

import argparse
import json

from mesh.settings import Settings
from stack import paths, tokens


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=("rotate", "drop-retired", "show"),
        help="rotate: new signing key, old one kept in the JWKS; drop-retired: remove "
        "the old ones; show: the JWKS",
    )


def main(args: argparse.Namespace) -> int:
    home = paths.home(Settings.from_env())
    if args.action == "rotate":
        key = tokens.rotate(home)
        print(f"new signing key {key.kid}; old keys stay valid until `nearby keys drop-retired`")
    elif args.action == "drop-retired":
        key = tokens.drop_retired(home)
        print(f"the JWKS holds only {key.kid} now")
    else:
        key = tokens.load_or_create(home)
        print(json.dumps(json.loads(key.jwks_path.read_text()), indent=2))
    return 0
