"""Generate the Python stubs (messages, .pyi, gRPC, typed gRPC) from protos/.

The public API's stubs (nearby.v1) live in the SDK package (sdk/nearby/v1), so
that the SDK ships them and the servers import the very same modules; the
internal contracts (mesh.internal.v1) live server-side, in the kernel package
(mesh/internal/v1), so the SDK never carries them. Run `make proto` after
editing a .proto; `--check` (used by the test suite) fails when the committed
stubs are stale.
"""

from __future__ import annotations

import argparse
import filecmp
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
        if args.check:
            current = [p for pkg, root in TARGETS.items() for p in generated_files(root, pkg)]
            stale = [
                str(p)
                for p in fresh
                if not (target(p) / p).exists()
                or not filecmp.cmp(out / p, target(p) / p, shallow=False)
            ]
            extra = [str(p) for p in current if p not in fresh]
            if stale or extra:
                print("generated stubs are stale; run `make proto`:", *stale, *extra, sep="\n  ")
                return 1
            print(f"stubs up to date ({len(fresh)} files)")
            return 0
        for pkg, root in TARGETS.items():
            shutil.rmtree(root / pkg, ignore_errors=True)
        for p in fresh:
            (target(p) / p).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / p, target(p) / p)
        print(f"wrote {len(fresh)} files: " + ", ".join(f"{pkg}/" for pkg in PACKAGES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
