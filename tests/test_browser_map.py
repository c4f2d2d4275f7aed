"""The map page (web/) in a real browser: Debian's Chromium, headless, driven by
playwright-core (web/test/map.test.mjs) against `nearby run --dev`, the stack
`make run` starts. Two users on two pages see each other, one moves and the
other page shows the new distance within a bound, one goes ghost and leaves
the other page with the reason shown; a page with an expired or missing token
shows a sign-in error. Screenshots and step timings are kept as artefacts in
.nearby/test-artefacts/browser/ (not committed)."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.web_stack import CHROMIUM, ROOT, WEB, WebStack

ARTEFACTS = ROOT / ".nearby" / "test-artefacts" / "browser"


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("content-type", "")


def test_make_run_serves_the_built_page_and_its_config(web_stack: WebStack) -> None:
    status, body, kind = _get(web_stack.map_url)
    assert (status, kind) == (200, "text/html")
    assert b"<title>nearby" in body and b'src="/assets/' in body
    status, body, _ = _get(web_stack.map_url + "config.json")
    assert status == 200
    assert json.loads(body) == {"envoy_port": web_stack.envoy_port, "tile_url": ""}
    asset = next((WEB / "dist" / "assets").glob("*.js")).name
    status, _, kind = _get(f"{web_stack.map_url}assets/{asset}")
    assert (status, kind) == (200, "text/javascript")
    assert _get(web_stack.map_url + "..%2f..%2fpyproject.toml")[0] == 404
    assert _get(web_stack.map_url + "nothing-here.js")[0] == 404


def test_two_users_on_two_pages_in_chromium(web_stack: WebStack) -> None:
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: run `make deps-browser`"
    shutil.rmtree(ARTEFACTS, ignore_errors=True)
    done = web_stack.node(
        ["--test", "--test-concurrency=1", "test/"],
        cwd=WEB,
        extra={"NEARBY_ARTEFACTS": str(ARTEFACTS), "NEARBY_CHROMIUM": CHROMIUM},
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "# pass 3" in output and "# fail 0" in output, output
    assert (ARTEFACTS / "map-page.png").stat().st_size > 10_000
    timings = json.loads((ARTEFACTS / "browser-timings.json").read_text())
    print("browser step timings (ms):", timings)
