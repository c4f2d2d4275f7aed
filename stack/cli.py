"""The `nearby` command: run the stack, mint dev tokens, watch, simulate.

Each subcommand lives in its own module and is imported only when used, so
`nearby token` does not pay for the simulator's imports.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module with `add_arguments(parser)` and `main(args) -> int`, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("stack.launcher", "start Redis/Postgres (if needed), the services and Envoy"),
    "token": ("stack.tokens", "print a JWT the local Envoy accepts"),
    "keys": ("stack.dev_keys", "rotate the dev signing key (new key; drop the old ones)"),
    "watch": ("stack.watch", "show a user's live nearby list in the terminal"),
    "sim": ("bench.sim", "simulate users walking around, through Envoy"),
    "forget": ("stack.forget", "delete your location history or your account"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `nearby` itself has no options but -h: its first other word is the subcommand
    chosen = next((word for word in argv if not word.startswith("-")), None)
    parser = argparse.ArgumentParser(prog="nearby", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name != chosen:
            continue
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as exc:
            # the module or its (not yet written) parent package is missing
            if exc.name is None or not (module + ".").startswith(exc.name + "."):
                raise
            p.set_defaults(_missing=True)
    args = parser.parse_args(argv)
    if getattr(args, "_missing", False):
        parser.error(f"`{args.command}` is not available in this build")
    result: int = importlib.import_module(args._module).main(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
