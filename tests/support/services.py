"""Run a service in-process on a free loopback port."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from mesh.server import Runner, ServiceApp


@contextlib.asynccontextmanager
async def running(app: ServiceApp) -> AsyncIterator[str]:
    """Serve `app` in-process on a free loopback port; yields its address."""
    runner = Runner(app, "127.0.0.1", 0, grace_s=2.0)
    port = await runner.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.stop()
