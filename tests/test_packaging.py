"""The built wheel carries the catalog: `dlenv list` works from a fresh venv, not only a checkout,
and computes the same content hashes as the checkout (the hash has no path in it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_catalog_and_hashes_match(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(dist.glob("dlenv-*.whl"))
    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(target)
    subprocess.run([str(target / "bin" / "pip"), "install", "-q", str(wheel)], check=True, capture_output=True)
    env = dict(os.environ, NO_COLOR="1")
    env.pop("DLENV_STACKS_DIR", None)
    env.pop("DLENV_TEMPLATES_DIR", None)
    installed = subprocess.run([str(target / "bin" / "dlenv"), "list", "--json"], cwd=tmp_path, env=env,
                               capture_output=True, text=True, check=True)
    checkout = subprocess.run([str(Path(sys.executable).parent / "dlenv"), "list", "--json"], env=env,
                              capture_output=True, text=True, check=True)
    rows = json.loads(installed.stdout)
    assert [r["stack"] for r in rows] == ["all-in-one", "all-in-one-gpu", "chainer", "chainer-gpu", "chainermn",
                                          "datascience", "python"]
    assert all(r["lock"] == "locked" for r in rows)  # the locks ship in the wheel next to the stacks
    assert {r["stack"]: r["hash"] for r in rows} == {r["stack"]: r["hash"] for r in json.loads(checkout.stdout)}
