"""Generate the Python stubs (messages, .pyi, gRPC, typed gRPC) from protos/.

The public API's stubs (nearby.v1) live in the SDK package (sdk/nearby/v1), so
that the SDK ships them and the servers import the very same modules; the
internal contracts (mesh.internal.v1) live server-side, in the kernel package
(mesh/internal/v1), so the SDK never carries them. Run `make proto` after
editing a .proto; `--check` (used by the test suite) fails when the committed
stubs are stale.

The TypeScript of the public API (sdk-ts/src/gen) comes from `buf generate`
with protos/buf.gen.yaml (local protoc-gen-es from sdk-ts/node_modules, so
`make deps-node` first); the same check covers it.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
SDK = ROOT / "sdk"
# generated package -> the folder it is written under
TARGETS = {"nearby/v1": SDK, "mesh/internal/v1": ROOT}
PACKAGES = tuple(TARGETS)
BUF_TEMPLATE = PROTOS / "buf.gen.yaml"


def generate(out: Path) -> None:
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    bin_dir = Path(sys.executable).parent
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_grpc_out={out}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        *files,
    ]
    done = subprocess.run(cmd, cwd=PROTOS, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"protoc failed:\n{done.stdout}{done.stderr}")
    for pkg in PACKAGES:
        (out / pkg / "__init__.py").write_text("")


def buf_outputs() -> list[Path]:
    """The folders (relative to the checkout) buf.gen.yaml writes into."""
    import yaml

    template = yaml.safe_load(BUF_TEMPLATE.read_text())
    return [
        Path(os.path.normpath(PROTOS / plugin["out"])).relative_to(ROOT)
        for plugin in template["plugins"]
    ]


def generate_buf(out: Path) -> None:
    """Runs buf.gen.yaml with every plugin's output moved under `out` (same
    relative paths as in the checkout)."""
    import yaml

    template = yaml.safe_load(BUF_TEMPLATE.read_text())
    for plugin, folder in zip(template["plugins"], buf_outputs(), strict=True):
        plugin["out"] = str(out / folder)
        local = PROTOS / plugin["local"]
        if not local.exists():
            raise SystemExit(f"{local.relative_to(ROOT)} is missing: run `make deps-node` first")
        plugin["local"] = str(local)
    buf = Path(sys.executable).parent / "buf"
    cmd = [str(buf), "generate", "--template", json.dumps(template)]
    done = subprocess.run(cmd, cwd=PROTOS, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"buf generate failed:\n{done.stdout}{done.stderr}")


def all_files(root: Path, folder: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in (root / folder).rglob("*") if p.is_file())


def generated_files(root: Path, *packages: str) -> list[Path]:
    return sorted(
        p.relative_to(root)
        for pkg in packages or PACKAGES
        for p in (root / pkg).glob("*")
        if p.is_file()
    )


def target(generated: Path) -> Path:
    """The folder a generated file (relative path) is written under."""
    return next(root for pkg, root in TARGETS.items() if generated.is_relative_to(pkg))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if stubs are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out)
        fresh = generated_files(out)
        ts_out = Path(tmp) / "buf"
        generate_buf(ts_out)
        ts_fresh = [p for folder in buf_outputs() for p in all_files(ts_out, folder)]
        if args.check:
            current = [p for pkg, root in TARGETS.items() for p in generated_files(root, pkg)]
            stale = [
                str(p)
                for p in fresh
                if not (target(p) / p).exists()
                or not filecmp.cmp(out / p, target(p) / p, shallow=False)
            ]
            stale += [
                str(p)
                for p in ts_fresh
                if not (ROOT / p).exists() or not filecmp.cmp(ts_out / p, ROOT / p, shallow=False)
            ]
            extra = [str(p) for p in current if p not in fresh]
            extra += [
                str(p)
                for folder in buf_outputs()
                for p in all_files(ROOT, folder)
                if p not in ts_fresh
            ]
            if stale or extra:
                print("generated stubs are stale; run `make proto`:", *stale, *extra, sep="\n  ")
                return 1
            print(f"stubs up to date ({len(fresh)} Python, {len(ts_fresh)} TypeScript files)")
            return 0
        for folder in buf_outputs():
            shutil.rmtree(ROOT / folder, ignore_errors=True)
        for p in ts_fresh:
            (ROOT / p).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ts_out / p, ROOT / p)
        for pkg, root in TARGETS.items():
            shutil.rmtree(root / pkg, ignore_errors=True)
        for p in fresh:
            (target(p) / p).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / p, target(p) / p)
        print(f"wrote {len(fresh)} files: " + ", ".join(f"{pkg}/" for pkg in PACKAGES))
        print(f"wrote {len(ts_fresh)} files: " + ", ".join(f"{f}/" for f in buf_outputs()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
