"""``make dist``: a wheel that carries the built dashboard, so installing it needs no Node.

The wheel is unpacked and the daemon run from it alone (its directory first on the import
path, no ``node`` on the PATH, the working directory outside the checkout): it serves the
app, the migrations and the API document from inside the package.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx

from tests.browser import ROOT, SimDaemon, write_sim_config


def build_wheel(out: Path) -> Path:
    subprocess.run(["make", "--no-print-directory", "dist", f"DIST={out}"], cwd=ROOT, check=True)
    (wheel,) = out.glob("gatewayd-*.whl")
    return wheel


def test_the_wheel_serves_the_dashboard_without_node(tmp_path: Path, pg_dsn: str) -> None:
    wheel = build_wheel(tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    assert "gatewayd/static/index.html" in names
    assert "gatewayd/openapi.json" in names
    assert any(re.fullmatch(r"gatewayd/sql/\d{3}_\w+\.up\.sql", n) for n in names)
    assert not [n for n in names if "node_modules" in n or n.startswith("dashboard/")]

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    index = (site / "gatewayd/static/index.html").read_text()
    script = re.search(r'src="/assets/([^"]+\.js)"', index)
    assert script is not None

    path = os.pathsep.join(
        d for d in os.environ.get("PATH", "").split(os.pathsep) if not (Path(d) / "node").exists()
    )
    env = {"PYTHONPATH": str(site), "PATH": path}
    where = subprocess.run(
        [sys.executable, "-c", "import gatewayd; print(gatewayd.__file__)"],
        env={**os.environ, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip() == str(site / "gatewayd" / "__init__.py")

    run = tmp_path / "run"
    run.mkdir()
    with SimDaemon.running(write_sim_config(run, pg_dsn), cwd=run, extra_env=env) as daemon:
        page = httpx.get(f"{daemon.base_url}/dashboard")
        assert page.status_code == 200 and page.text == index
        asset = httpx.get(f"{daemon.base_url}/assets/{script.group(1)}")
        assert asset.status_code == 200
        assert asset.content == (site / "gatewayd/static/assets" / script.group(1)).read_bytes()
        assert (
            httpx.get(f"{daemon.base_url}/health").json()["components"]["database"]["status"]
            == "up"
        )
