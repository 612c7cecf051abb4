"""`autotuner calibrate`: accuracy on the shared Vidur profiles, fitting, and profile errors."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest

from autotuner.commands.calibrate import add_arguments as add_calibrate_arguments
from autotuner.commands.calibrate import run as run_calibrate
from autotuner.sim.calibrate import (
    Evaluator,
    ProfileError,
    calibrate,
    fit_constants,
    gpu_constants,
    guess_gpu,
    load_profile,
)
from autotuner.sim.costmodel import PROFILE_OPS, CostModel
from autotuner.sim.hardware import get_gpu


def _shared_data() -> Path:
    env = os.environ.get("AUTOTUNER_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


PROFILES = _shared_data() / "profiles"
PROFILE_NAMES = (
    "h100_meta-llama_Llama-2-7b-hf",
    "h100_meta-llama_Llama-2-70b-hf",
    "a100_meta-llama_Meta-Llama-3-8B",
    "a100_meta-llama_Meta-Llama-3-70B",
)
needs_profiles = pytest.mark.skipif(
    not all((PROFILES / n / "mlp.csv").is_file() for n in PROFILE_NAMES),
    reason=f"shared Vidur profiles absent at {PROFILES} (set AUTOTUNER_SHARED_DATA)",
)

SHAPE = {
    "n_head": "32",
    "n_kv_head": "8",
    "n_embd": "4096",
    "n_expanded_embd": "14336",
    "vocab_size": "128256",
    "use_gated_mlp": "True",
}


def write_profile(path: Path, rows: list[dict[str, str]], drop: str | None = None) -> Path:
    """A small synthetic Vidur-format profile (medians only, in ms)."""
    cols = [f"time_stats.{op}.median" for op in PROFILE_OPS] + list(SHAPE)
    cols += ["num_tokens", "num_tensor_parallel_workers"]
    cols = [c for c in cols if c != drop]
    lines = [",".join(cols)]
    for r in rows:
        lines.append(",".join(r.get(c, "") for c in cols))
    path.write_text("\n".join(lines) + "\n")
    return path


def synthetic_rows(gpu: str = "h100") -> list[dict[str, str]]:
    """Rows whose times the cost model itself predicts."""
    rows = []
    for tp in (1, 2):
        model = load_profile_model()
        cm = CostModel(model, get_gpu(gpu), tp)
        for tokens in (1, 16, 128, 512, 2048, 8192):
            t = cm.op_times(tokens)
            r = {f"time_stats.{op}.median": f"{t[op] * 1e3:.6g}" for op in PROFILE_OPS}
            r.update(SHAPE, num_tokens=str(tokens), num_tensor_parallel_workers=str(tp))
            rows.append(r)
    return rows


def load_profile_model():
    from autotuner.sim.hardware import get_model

    return get_model("llama-3-8b")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_calibrate_arguments(p)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Acceptance on the shared profiles


@needs_profiles
@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_shipped_constants_meet_the_bars(name):
    """Issue 14's bars: overall MAPE <= 5 % on every profile, no band of iteration sizes worse
    than 10 % (65-1,024 tokens were 10-37 % too fast before the GEMM shape terms)."""
    path = PROFILES / name / "mlp.csv"
    prof = load_profile(path)
    gpu = guess_gpu(str(path))
    assert gpu is not None
    ev = Evaluator(prof, gpu)
    rep = ev.report(gpu_constants(gpu))
    assert rep["overall_mape"] <= 0.05, rep["overall_mape"]
    bands = rep["overall_mape_by_band"]
    assert {"65-256", "257-1,024"} <= set(bands)
    for band, figures in bands.items():
        assert figures["mape"] <= 0.10, (band, figures)
        assert abs(figures["bias"]) <= 0.08, (band, figures)
    # Every TP degree on its own, too, and no large systematic bias.
    assert max(rep["overall_mape_by_tp"].values()) <= 0.07
    assert abs(rep["overall_bias"]) <= 0.03
    # The operators that dominate an iteration are individually close as well.
    for op in ("attn_pre_proj", "mlp_up_proj", "mlp_down_proj"):
        assert rep["per_op_mape"][op] <= 0.16, (op, rep["per_op_mape"][op])


@needs_profiles
@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_the_plain_roofline_fails_the_band_bar(name):
    """The yardstick can fail: without the shape terms (tile, ramp, knee) some band of some
    profile misses 10 %, which is why they exist."""
    path = PROFILES / name / "mlp.csv"
    gpu = guess_gpu(str(path))
    assert gpu is not None
    plain = {**gpu_constants(gpu), "gemm_tile_m": 0, "gemm_ramp_rows": 0.0, "roofline_knee": 0.0}
    rep = Evaluator(load_profile(path), gpu).report(plain)
    worst = max(b["mape"] for b in rep["overall_mape_by_band"].values())
    assert worst > 0.10 or rep["overall_mape"] > 0.05, (name, worst)


@needs_profiles
def test_constants_fitted_on_one_model_hold_on_the_other():
    """Not a per-size table: fitted on one model of a GPU, the constants stay within the bars
    on the other model's profile (a different shape), up to a little slack."""
    for fit_on, check_on in ((0, 1), (1, 0), (2, 3), (3, 2)):
        fit_path = str(PROFILES / PROFILE_NAMES[fit_on] / "mlp.csv")
        gpu = guess_gpu(fit_path)
        assert gpu is not None
        fitted = fit_constants([Evaluator(load_profile(fit_path), gpu)], gpu_constants(gpu))
        other = Evaluator(load_profile(PROFILES / PROFILE_NAMES[check_on] / "mlp.csv"), gpu)
        rep = other.report(fitted)
        assert rep["overall_mape"] <= 0.065, (PROFILE_NAMES[check_on], rep["overall_mape"])
        worst = max(b["mape"] for b in rep["overall_mape_by_band"].values())
        assert worst <= 0.12, (PROFILE_NAMES[check_on], rep["overall_mape_by_band"])


@needs_profiles
def test_evaluator_agrees_with_cost_model_op_times():
    path = PROFILES / PROFILE_NAMES[1] / "mlp.csv"
    prof = load_profile(path)
    gpu = get_gpu("h100")
    pred = Evaluator(prof, gpu).predict(gpu_constants(gpu))
    for i in range(0, len(prof.num_tokens), 97):
        cm = CostModel(prof.model, gpu, int(prof.tp[i]))
        ops = cm.op_times(int(prof.num_tokens[i]))
        np.testing.assert_allclose(pred[i], [ops[op] for op in PROFILE_OPS], rtol=1e-12)


@needs_profiles
def test_joint_fit_per_gpu_reproduces_shipped_constants():
    """One constant set per GPU, fitted over both of its models, is what hardware.py ships."""
    for prefix, gpu_name in (("h100", "h100"), ("a100", "a100")):
        paths = [str(PROFILES / n / "mlp.csv") for n in PROFILE_NAMES if n.startswith(prefix)]
        res = calibrate(paths)
        gpu = get_gpu(gpu_name)
        assert res["gpu"] == gpu.name
        fitted = res["fitted"]
        assert fitted["gemm_tile_m"] == gpu.gemm_tile_m
        assert fitted["compute_eff"] == pytest.approx(gpu.compute_eff, abs=0.02)
        assert fitted["mem_eff"] == pytest.approx(gpu.mem_eff, abs=0.02)
        assert fitted["ew_mem_eff"] == pytest.approx(gpu.elementwise_eff, abs=0.03)
        assert fitted["op_overhead_s"] == pytest.approx(gpu.op_overhead_s, abs=1.5e-6)
        assert fitted["gemm_ramp_rows"] == pytest.approx(gpu.gemm_ramp_rows, abs=8)
        assert fitted["roofline_knee"] == pytest.approx(gpu.roofline_knee, abs=0.5)
        for prof in res["profiles"]:
            assert prof["fitted"]["overall_mape"] <= 0.05
            assert prof["shipped"]["overall_mape"] <= prof["fitted"]["overall_mape"] + 0.005


@needs_profiles
def test_cli_prints_tables_and_json(capsys):
    path = str(PROFILES / PROFILE_NAMES[2] / "mlp.csv")
    assert run_calibrate(parse(["--profile", path])) == 0
    out = capsys.readouterr().out
    assert "OVERALL (layer sum)" in out and "mlp_up_proj" in out
    assert "by iteration size, tokens" in out and "65-256" in out and "257-1,024" in out
    assert 'dataclasses.replace(get_gpu("A100-80GB"), compute_eff=' in out
    assert run_calibrate(parse(["--profile", path, "--json", "--gpu", "a100"])) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["gpu"] == "A100-80GB"
    assert set(data["profiles"][0]["shipped"]["per_op_mape"]) == set(PROFILE_OPS)
    bands = data["profiles"][0]["fitted"]["overall_mape_by_band"]
    assert list(bands) == ["1-64", "65-256", "257-1,024", "1,025-4,096", "4,097+"]


# ---------------------------------------------------------------------------------------------
# Fitting on synthetic data (no shared data needed)


def test_fit_recovers_constants_from_a_synthetic_profile(tmp_path):
    """Times generated by the model with other constants: the fit must find those constants."""
    import dataclasses

    true = dataclasses.replace(
        get_gpu("h100"),
        compute_eff=0.55,
        mem_eff=0.7,
        ew_mem_eff=0.9,
        op_overhead_s=6e-6,
        gemm_ramp_rows=40.0,
        roofline_knee=4.0,
        gemm_tile_m=64,
    )
    rows = []
    for tp in (1, 2, 4):
        cm = CostModel(load_profile_model(), true, tp)
        # Sizes off the tile grid too, or the tile height could not be told apart.
        for tokens in (1, 4, 16, 64, 80, 128, 200, 256, 300, 512, 700, 1024, 2048, 4096):
            t = cm.op_times(tokens)
            r = {f"time_stats.{op}.median": repr(t[op] * 1e3) for op in PROFILE_OPS}
            r.update(SHAPE, num_tokens=str(tokens), num_tensor_parallel_workers=str(tp))
            rows.append(r)
    (tmp_path / "h100_synthetic").mkdir()
    path = write_profile(tmp_path / "h100_synthetic" / "mlp.csv", rows)
    res = calibrate([str(path)])
    assert res["gpu"] == "H100-SXM"
    fit = res["fitted"]
    assert fit["gemm_tile_m"] == 64
    assert fit["compute_eff"] == pytest.approx(0.55, abs=0.01)
    assert fit["mem_eff"] == pytest.approx(0.7, abs=0.01)
    assert fit["ew_mem_eff"] == pytest.approx(0.9, abs=0.02)  # small ops: weakly determined
    assert fit["op_overhead_s"] == pytest.approx(6e-6, abs=0.3e-6)
    assert fit["gemm_ramp_rows"] == pytest.approx(40.0, abs=4)
    assert fit["roofline_knee"] == pytest.approx(4.0, abs=0.5)
    assert res["profiles"][0]["fitted"]["overall_mape"] < 0.005
    # The shipped H100 constants are faster than this made-up GPU: they under-predict.
    assert res["profiles"][0]["shipped"]["overall_bias"] < -0.05


def test_gpu_is_required_when_the_folder_does_not_say(tmp_path, capsys):
    path = write_profile(tmp_path / "mlp.csv", synthetic_rows())
    assert run_calibrate(parse(["--profile", str(path)])) == 2
    err = capsys.readouterr().err
    assert err.startswith("autotuner calibrate: error: ") and "--gpu" in err
    assert err.count("\n") == 1
    assert run_calibrate(parse(["--profile", str(path), "--gpu", "H100"])) == 0
    capsys.readouterr()
    assert run_calibrate(parse(["--profile", str(path), "--gpu", "tpu"])) == 2
    assert "known GPUs" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Malformed profiles: one clear line naming file, line and column


def test_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope.csv"
    with pytest.raises(ProfileError, match=r"nope\.csv: cannot read profile"):
        load_profile(missing)
    assert run_calibrate(parse(["--profile", str(missing), "--gpu", "h100"])) == 2
    err = capsys.readouterr().err
    assert err.startswith("autotuner calibrate: error: ") and err.count("\n") == 1
    assert "Traceback" not in err


def test_missing_column(tmp_path):
    path = write_profile(tmp_path / "p.csv", synthetic_rows(), drop="time_stats.mlp_act.median")
    with pytest.raises(ProfileError) as exc:
        load_profile(path)
    msg = str(exc.value)
    assert isinstance(exc.value, ValueError)
    assert f"{path}:1:" in msg and "'time_stats.mlp_act.median'" in msg


def test_non_number_names_line_and_field(tmp_path, capsys):
    rows = synthetic_rows()
    rows[3]["time_stats.mlp_up_proj.median"] = "fast"
    path = write_profile(tmp_path / "p.csv", rows)
    with pytest.raises(ProfileError) as exc:
        load_profile(path)
    msg = str(exc.value)
    # Header is line 1, so the fourth data row is line 5.
    col = [f"time_stats.{op}.median" for op in PROFILE_OPS].index("time_stats.mlp_up_proj.median")
    assert f"{path}:5: column {col + 1} (time_stats.mlp_up_proj.median)" in msg
    assert "'fast'" in msg
    assert run_calibrate(parse(["--profile", str(path), "--gpu", "h100"])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ":5: column" in err


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("num_tokens", "0", "positive integer"),
        ("num_tokens", "2.5", "positive integer"),
        ("num_tensor_parallel_workers", "", "expected a number"),
        ("time_stats.add.median", "-1", "positive time"),
        ("time_stats.add.median", "nan", "finite"),
        ("use_gated_mlp", "maybe", "True or False"),
    ],
)
def test_bad_values(tmp_path, field, value, fragment):
    rows = synthetic_rows()
    rows[0][field] = value
    path = write_profile(tmp_path / "p.csv", rows)
    with pytest.raises(ProfileError, match=fragment) as exc:
        load_profile(path)
    assert f"{path}:2: column" in str(exc.value) and field in str(exc.value)


def test_structural_problems(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ProfileError, match=r"empty\.csv:1: empty file"):
        load_profile(empty)
    header_only = write_profile(tmp_path / "h.csv", [])
    with pytest.raises(ProfileError, match="no data rows"):
        load_profile(header_only)
    ragged = write_profile(tmp_path / "r.csv", synthetic_rows())
    lines = ragged.read_text().splitlines()
    lines[2] += ",extra"
    ragged.write_text("\n".join(lines) + "\n")
    with pytest.raises(ProfileError, match=r"r\.csv:3: expected \d+ fields"):
        load_profile(ragged)
    rows = synthetic_rows()
    rows[4]["n_embd"] = "8192"
    mixed = write_profile(tmp_path / "m.csv", rows)
    with pytest.raises(ProfileError, match=r"m\.csv:6: model shape columns differ from line 2"):
        load_profile(mixed)


def test_model_shape_comes_from_the_file(tmp_path):
    prof = load_profile(write_profile(tmp_path / "p.csv", synthetic_rows()))
    m = prof.model
    assert (m.hidden, m.heads, m.kv_heads, m.head_dim) == (4096, 32, 8, 128)
    assert (m.intermediate, m.vocab, m.gated_mlp) == (14336, 128256, True)
    assert sorted(set(prof.tp.tolist())) == [1, 2]
    assert prof.measured.shape == (12, len(PROFILE_OPS))
