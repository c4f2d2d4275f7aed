"""Generate the Python stubs (messages, .pyi, gRPC, typed gRPC) from protos/.

The stubs live in the SDK package (sdk/nearby/...), so that the SDK ships them
and the server imports the very same modules. Run `make proto` after editing a
.proto; `--check` (used by the test suite) fails when the committed stubs are
stale.
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
PACKAGES = ("nearby/v1", "nearby/internal/v1")


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


def generated_files(root: Path) -> list[Path]:
    return sorted(
        p.relative_to(root) for pkg in PACKAGES for p in (root / pkg).glob("*") if p.is_file()
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if stubs are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out)
        fresh = generated_files(out)
        if args.check:
            current = generated_files(SDK)
            stale = [
                str(p)
                for p in fresh
                if not (SDK / p).exists() or not filecmp.cmp(out / p, SDK / p, shallow=False)
            ]
            extra = [str(p) for p in current if p not in fresh]
            if stale or extra:
                print("generated stubs are stale; run `make proto`:", *stale, *extra, sep="\n  ")
                return 1
            print(f"stubs up to date ({len(fresh)} files)")
            return 0
        for pkg in PACKAGES:
            shutil.rmtree(SDK / pkg, ignore_errors=True)
        for p in fresh:
            (SDK / p).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / p, SDK / p)
        print(f"wrote {len(fresh)} files under sdk/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
