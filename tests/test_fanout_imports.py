"""The fan-out's parts import one way (view <- session <- watch_session <-
streams <- service),
and the friend view stays pure: no gRPC, no asyncio."""

from __future__ import annotations

import ast
from pathlib import Path

import fanout_svc

ROOT = Path(fanout_svc.__file__).parent
ORDER = ["view", "session", "watch_session", "streams", "service"]


def imports(module: str) -> set[str]:
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module == "fanout_svc":
                found.update(f"fanout_svc.{alias.name}" for alias in node.names)
    return found


def test_the_parts_import_one_way() -> None:
    for i, module in enumerate(ORDER):
        later = {f"fanout_svc.{m}" for m in ORDER[i + 1 :]}
        assert not imports(module) & later, f"{module} imports a part built on it"
    assert "fanout_svc.view" in imports("session")
    assert "fanout_svc.session" in imports("streams")
    assert "fanout_svc.session" in imports("watch_session")


def test_the_view_is_pure() -> None:
    own = imports("view")
    for name in own:
        root = name.split(".")[0]
        assert root not in {"grpc", "asyncio", "redis", "psycopg"}, name
    assert not any(name.startswith("fanout_svc.") and name != "fanout_svc.nearby" for name in own)
