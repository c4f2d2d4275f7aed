"""The TypeScript SDK (sdk-ts/): its unit tests (Node's test runner), then its
end-to-end tests from Node through the real Envoy against the real mesh of
`nearby run --dev`: the bidirectional Connect over HTTP/2 (gRPC), and the
browser path (Watch + ReportLocation) over the Connect protocol and grpc-web."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.web_stack import SDK_TS, WebStack, build_web


def _passed(done: subprocess.CompletedProcess[str]) -> str:
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "# fail 0" in output, output
    return output


def test_unit_tests_pass() -> None:
    build_web()
    done = subprocess.run(
        ["node", "--test", "dist/test/unit/"],
        cwd=SDK_TS,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = _passed(done)
    assert "# pass 0" not in output


def test_end_to_end_through_envoy(web_stack: WebStack) -> None:
    done = web_stack.node(
        ["--test", "--test-concurrency=1", "dist/test/e2e/"], cwd=SDK_TS, timeout=300
    )
    output = _passed(done)
    for name in ("Connect bidi", "Connect protocol", "grpc-web", "expired or missing token"):
        assert name in output, output


def test_declarations_are_emitted() -> None:
    build_web()
    for entry in ("index", "node", "web", "session", "events"):
        assert (Path(SDK_TS) / "dist" / "src" / f"{entry}.d.ts").is_file()
