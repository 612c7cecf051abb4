"""The installed package works from a wheel, not only from a checkout."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot build a wheel here (no build backend?): {proc.stderr[-300:]}")
    return next(out.glob("autotuner-*.whl"))


def test_wheel_ships_assets_inside_the_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "autotuner/_data/baselines/fixed_chunk.py" in names
    assert any(n.startswith("autotuner/_data/prompts/") for n in names)
    assert any(n.startswith("autotuner/_data/sandbox/") for n in names)
    tops = {n.split("/")[0] for n in names}
    assert not tops & {"sandbox", "baselines", "prompts", "tests", "scripts"}


def test_wheel_install_runs_outside_the_checkout(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True, timeout=300, capture_output=True)
    proc = subprocess.run(
        [str(env_dir / "bin" / "autotuner"), "simulate", "--policy", "sarathi_shrinking",
         "--requests", "50", "--json"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    # the sandboxed path too: the worker must find the installed package, not the checkout
    proc = subprocess.run(
        [str(env_dir / "bin" / "autotuner"), "evaluate", "--policy", "fixed_chunk",
         "--requests", "50"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0 and "verdict   ok" in proc.stdout, proc.stdout + proc.stderr
    found = subprocess.run(
        [str(py), "-c", "import autotuner, sys; print(autotuner.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    ).stdout
    assert str(env_dir) in found  # the wheel's copy, not the checkout
