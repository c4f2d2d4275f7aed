"""`nearby run --dev` (what `make run` starts) for the TypeScript SDK's and the
map page's tests: the whole mesh behind the real Envoy on free ports, the dev
login at /dev/token, the built map page on its own port, one database of its
own. Needs `make deps-node` (the Node packages); builds the SDK and the page.

    with web_stack(pg_admin_url, tmp) as stack:
        stack.envoy_url       # "http://127.0.0.1:PORT": Envoy (gRPC, grpc-web, Connect, /dev/token)
        stack.map_url         # "http://127.0.0.1:PORT/": the map page
        stack.expired_token() # a token of this stack's dev key that expired an hour ago
        stack.node(["--test", "dist/test/e2e/"], cwd=SDK_TS)  # node with NEARBY_* set
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mesh.settings import Settings
from stack import infra, tokens
from tests.support import nearby_run

ROOT = nearby_run.ROOT
SDK_TS = ROOT / "sdk-ts"
WEB = ROOT / "web"
CHROMIUM = "/usr/bin/chromium"


def need_node_modules() -> None:
    for folder in (SDK_TS, WEB):
        if not (folder / "node_modules").is_dir():
            raise RuntimeError(f"{folder.name}/node_modules is missing: run `make deps-node`")
    if shutil.which("node") is None:
        raise RuntimeError("node is not installed")


SOURCES = (
    SDK_TS / "src",
    SDK_TS / "test",
    SDK_TS / "package-lock.json",
    SDK_TS / "tsconfig.json",
    WEB / "src",
    WEB / "index.html",
    WEB / "package-lock.json",
    WEB / "vite.config.ts",
)
OUTPUTS = (SDK_TS / "dist" / "src" / "index.js", WEB / "dist" / "index.html")


def _newest(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return max((f.stat().st_mtime for f in files), default=0.0)


def build_web() -> None:
    """The SDK (tsc) and the map page (vite), as `make run` builds them; skipped
    when both builds are newer than every source."""
    need_node_modules()
    if all(o.is_file() for o in OUTPUTS):
        built = min(o.stat().st_mtime for o in OUTPUTS)
        if all(_newest(src) < built for src in SOURCES):
            return
    done = subprocess.run(
        ["npm", "run", "build", "--silent"], cwd=WEB, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError(f"npm run build failed:\n{done.stdout}\n{done.stderr}")


@dataclass
class WebStack:
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    home: Path
    envoy_port: int
    map_port: int

    @property
    def envoy_url(self) -> str:
        return f"http://127.0.0.1:{self.envoy_port}"

    @property
    def map_url(self) -> str:
        return f"http://127.0.0.1:{self.map_port}/"

    def expired_token(self, user_id: str = "expired-user") -> str:
        settings = Settings()
        return tokens.load_or_create(self.home).sign(
            user_id,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            ttl_s=60,
            now=time.time() - 3600,
        )

    def fanout_pid(self) -> int:
        """The pid of the stack's (only) fan-out replica now."""
        return nearby_run.pid_on_port(self.proc.pid, int(self.env["FANOUT_PORT"]))

    def node(
        self, args: Sequence[str], *, cwd: Path, extra: dict[str, str] | None = None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env.update(
            NEARBY_URL=self.envoy_url,
            NEARBY_MAP_URL=self.map_url,
            NEARBY_RUN_ID=uuid.uuid4().hex[:8],
            NEARBY_EXPIRED_TOKEN=self.expired_token(),
            NEARBY_FANOUT_PID=str(self.fanout_pid()),
            **(extra or {}),
        )
        return subprocess.run(
            ["node", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )


@contextlib.contextmanager
def web_stack(pg_admin_url: str, tmp: Path) -> Iterator[WebStack]:
    """The stack on a Redis of its own (other tests flush the shared one) and a
    database of its own."""
    build_web()
    name = f"nearby_web_{uuid.uuid4().hex[:12]}"
    infra.create_database(pg_admin_url, name)
    own_redis = infra.RedisServer(tmp / "redis").start()
    home = tmp / "home"
    env = nearby_run.run_env(own_redis.url, infra.database_url(pg_admin_url, name), home)
    map_port, dev_port = nearby_run.free_block(1), nearby_run.free_block(1)
    env.update(MAP_PORT=str(map_port), DEV_TOKEN_PORT=str(dev_port))
    envoy_port, admin_port = nearby_run.free_block(1), nearby_run.free_block(1)
    out = tmp / "nearby-run.log"
    args = [*nearby_run.stack_args(envoy_port, admin_port, 1), "--dev"]
    proc = nearby_run.run(args, env, out)
    try:
        nearby_run.wait_running(proc, out)
        yield WebStack(proc, env, home, envoy_port, map_port)
    finally:
        _stop(proc)
        own_redis.stop()
        infra.drop_database(pg_admin_url, name)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, as a person stops `make run`; killed if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
    nearby_run.kill_tree(proc)
