"""Where the checkout is, and where `nearby` keeps its local state.

A relative NEARBY_HOME (the default `.nearby`) is taken relative to the root
of the checkout this package was loaded from, not to the current folder, so
`nearby run`, `nearby token` and `nearby watch` share one dev key, one JWKS
and one set of logs from any folder of the checkout. Installed outside a
checkout (a plain `pip install .`), it is relative to the current folder.
"""

from __future__ import annotations

from pathlib import Path

from mesh.settings import Settings

_CANDIDATE = Path(__file__).resolve().parent.parent


def checkout() -> Path | None:
    """The repository root this package runs from, or None when installed."""
    markers = (_CANDIDATE / "pyproject.toml", _CANDIDATE / "stack", _CANDIDATE / "mesh")
    return _CANDIDATE if all(m.exists() for m in markers) else None


def home(settings: Settings) -> Path:
    """NEARBY_HOME as an absolute path (see the module docstring)."""
    path = Path(settings.nearby_home).expanduser()
    if not path.is_absolute():
        path = (checkout() or Path.cwd()) / path
    return path.resolve()
