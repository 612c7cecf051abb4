"""The installed package works from a wheel, not only from a checkout."""

from __future__ import annotations

import os
import site
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


def _venv_with_our_dependencies(env_dir: Path) -> Path:
    """A fresh venv that sees the dependencies installed where these tests run, and nothing of
    the checkout: the running environment's site-packages are appended to its sys.path by a
    .pth file (lines there are only appended, so an editable install's own .pth in those folders
    is not followed). No network, no pip inside the new venv (ours installs into it)."""
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    own = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         capture_output=True, text=True, check=True).stdout.strip()
    user = [site.getusersitepackages()] if site.ENABLE_USER_SITE else []
    ours = [p for p in [*site.getsitepackages(), *user] if Path(p).is_dir()]
    (Path(own) / "_running_env.pth").write_text("\n".join(ours) + "\n")
    return py


def test_wheel_install_runs_outside_the_checkout(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    py = _venv_with_our_dependencies(env_dir)
    # PYTHONPATH (a checkout run with PYTHONPATH=$PWD) would put the checkout first: drop it
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)],
                   check=True, timeout=300, capture_output=True, env=env)
    found = subprocess.run(
        [str(py), "-c", "import autotuner, numpy, optuna; print(autotuner.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.startswith(str(env_dir))  # the wheel's copy, not the checkout
    proc = subprocess.run(
        [str(env_dir / "bin" / "autotuner"), "simulate", "--policy", "sarathi_shrinking",
         "--requests", "50", "--json"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    # the sandboxed path too: the worker must find the installed package, not the checkout
    proc = subprocess.run(
        [str(env_dir / "bin" / "autotuner"), "evaluate", "--policy", "fixed_chunk",
         "--requests", "50"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )
    assert proc.returncode == 0 and "verdict   ok" in proc.stdout, proc.stdout + proc.stderr


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    blocks = setup.split("```sh\n")[1:]
    return [block.split("```", 1)[0].strip() for block in blocks]


def test_readme_set_up_commands_make_and_use_a_venv_and_ci_runs_the_test_command():
    run_cmd, test_cmd = _readme_commands()
    for cmd in (run_cmd, test_cmd):
        assert "\n" not in cmd  # one line each, to paste
        assert cmd.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install ")
    assert run_cmd.endswith("&& autotuner run")
    assert test_cmd.endswith("&& python -m pytest -q")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert ci[-1] == test_cmd  # CI runs exactly what the README tells a user to run
    assert ".ci/sandboxes.sh" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_test_command_prints_pytests_totals_line(tmp_path):
    """pyproject's addopts must not add a second -q (-qq drops the totals line)."""
    (tmp_path / "test_one.py").write_text("def test_one():\n    assert True\n")
    (tmp_path / "pyproject.toml").write_text(
        (ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "test_one.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("1 passed in "), proc.stdout
