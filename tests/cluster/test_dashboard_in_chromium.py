"""The master's web dashboard, loaded in headless Chromium, shows the cluster as it is (a killed CS included)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from ._ops_helpers import stat, wait_for
from .conftest import run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium(tmp_path, *args: str) -> str:
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    result = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=90, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/install.sh installs it)")
def test_dashboard_shows_servers_health_and_events(make_cluster, tmp_path) -> None:
    cluster = make_cluster(n_cs=3)
    assert run_cli("-c", "test", "set-config", "cs-inactive-timeout=1", "cs-offline-timeout=2").returncode == 0
    victim = next(r["id"] for r in cluster.status() if r["role"] == "cs" and r["addr"] == cluster.find("cs", 2).addr)
    cluster.kill("cs", 2)
    s = wait_for("the killed CS to go offline",
                 lambda: (lambda s: s if s["status"] == "degraded" and any(
                     c["id"] == victim and c["status"] == "offline" for c in s["cs"]) else None)(stat()))
    url = s["dashboard"]
    assert url.startswith("http://127.0.0.1:")

    # --virtual-time-budget lets the page's fetch of /api/stat and its rendering finish before the DOM is dumped.
    dom = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", url)
    assert '<span id="cluster">test</span>' in dom
    assert re.search(r'id="status" class="badge degraded">degraded<', dom), dom[:3000]
    rows = dict(re.findall(r'<tr data-id="(\d+)" data-status="(\w+)">', dom))
    assert rows == {str(c["id"]): c["status"] for c in s["cs"]}
    assert rows[str(victim)] == "offline"
    assert dom.count(">MDS#1<") == 1 and ">master<" in dom
    assert f"CS#{victim} offline" in dom  # the event, in the latest-events table
    assert "<canvas" in dom and "reads/s" in dom

    shot = tmp_path / "dashboard.png"
    chromium(tmp_path, "--window-size=1280,1100", "--virtual-time-budget=3000", f"--screenshot={shot}", url)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
