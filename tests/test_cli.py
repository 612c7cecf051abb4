"""The command line: readable output, --json, and one clear line for every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autotuner.commands.main import main

SHARED = Path(os.environ.get("AUTOTUNER_SHARED_DATA", Path(__file__).resolve().parents[1] / ".."
                              / "shared" / "data"))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_simulate_prints_a_metrics_table(capsys):
    code, out, err = run(capsys, "simulate", "--workload", "chat", "--requests", "300")
    assert code == 0, err
    for word in ("TTFT", "TPOT", "throughput", "SLO attainment", "goodput", "cost", "p99"):
        assert word in out


def test_simulate_json_has_every_metric(capsys):
    code, out, _ = run(capsys, "simulate", "--policy", "prefix_aware", "--workload", "multiturn",
                       "--requests", "200", "--replicas", "2", "--json", "--ttft-slo", "5")
    assert code == 0
    data = json.loads(out)
    m = data["metrics"]
    for key in ("ttft_s", "tpot_s", "e2e_s", "queue_s", "throughput_tok_s", "attainment",
                "goodput_tok_s", "cost_per_mtok_usd"):
        assert key in m
    assert m["slo"]["ttft_s"] == 5.0 and data["cluster"]["replicas"] == 2
    assert set(m["queue_s"]) == {"mean", "p50", "p90", "p99"}


def test_simulate_capacity(capsys):
    code, out, _ = run(capsys, "simulate", "--workload", "chat", "--requests", "300",
                       "--replicas", "1", "--capacity", "--json")
    assert code == 0
    cap = json.loads(out)["capacity"]
    assert cap["rate"] > 0 and len(cap["probes"]) >= 3
    # checked as the gate checks it: on a run twice as long, longer runs if that one moved it
    assert cap["settled"] in (True, False) and cap["requests"] in (300, 600, 1200)


def test_workloads_lists_the_scenarios(capsys):
    code, out, _ = run(capsys, "workloads")
    assert code == 0
    for name in ("chat", "summarize", "multiturn", "bursty", "mixed"):
        assert name in out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["simulate", "--workload", "nope"], "nope"),
        (["simulate", "--gpu", "tpu9"], "tpu9"),
        (["simulate", "--model", "gpt-17"], "gpt-17"),
        (["simulate", "--replicas", "0"], "--replicas"),
        (["simulate", "--requests", "0"], "requests"),
        (["simulate", "--rate", "-3"], "rate"),
        (["simulate", "--policy", "missing_policy.py"], "missing_policy.py"),
        (["simulate", "--policy", "no_such_baseline"], "no_such_baseline"),
        (["simulate", "--param", "chunk_size=abc"], "not a number"),
        (["simulate", "--param", "chunky=5"], "chunky"),
        (["simulate", "--param", "chunk_size=1"], "outside"),
        (["simulate", "--trace", "/nonexistent/trace.csv"], "trace.csv"),
        (["simulate", "--window", "0:10"], "--window"),
        (["simulate", "--model", "llama-3-70b", "--gpu", "a100"], "fit"),
        (["simulate", "--ttft-slo", "0"], "SLO"),
        (["bench", "--requests", "0"], "--requests"),
        (["bench", "--rate", "nan"], "--rate"),
        (["bench", "--capacity-length", "--lengths", "5"], "SHORT,LONG"),
        (["bench", "--capacity-length", "--lengths", "100,50"], "SHORT < LONG"),
        (["bench", "--capacity-length", "--scenarios", "chatty"], "chatty"),
        (["bench", "--capacity-length", "--slo-kinds", "strict"], "strict"),
        (["bench", "--capacity-length", "--policy", "no_such_policy"], "no_such_policy"),
        (["bench", "--capacity-length", "--seeds", "1,x"], "--seeds"),
        (["bench", "--capacity-length", "--seeds", ","], "--seeds"),
    ],
)
def test_bad_input_gets_one_clear_line(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"autotuner {argv[0]}: error:"), err
    assert needle in lines[0]
    assert "Traceback" not in err


def test_bench_prints_the_speed_and_its_ratios(capsys):
    code, out, err = run(capsys, "bench", "--requests", "300", "--repeat", "1", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["wall_s"] > 0 and data["requests_per_s"] == pytest.approx(300 / data["wall_s"])
    assert data["fast_forward_speedup"] > 0 and data["max_finish_time_difference_s"] < 1e-6
    code, out, err = run(capsys, "bench", "--requests", "300", "--repeat", "1", "--no-reference")
    assert code == 0 and "simulated requests/s" in out and "step-by-step" not in out


def test_bench_capacity_against_run_length(capsys):
    code, out, err = run(capsys, "bench", "--capacity-length", "--lengths", "100,200",
                         "--scenarios", "chat", "--policy", "fixed_chunk", "--json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["policy"] == "fixed_chunk" and row["capacity_short"] > 0
    assert row["ratio"] == pytest.approx(row["capacity_long"] / row["capacity_short"])
    code, out, err = run(capsys, "bench", "--capacity-length", "--lengths", "100,200",
                         "--scenarios", "chat", "--policy", "fixed_chunk", "--seeds", "1,2",
                         "--json")
    assert code == 0, err
    (pooled,) = json.loads(out)
    assert pooled["seeds"] == [1, 2] and pooled["capacity_short"] > 0


def test_malformed_trace_names_line_and_field(capsys, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,10,5\n1.0,x,5\n")
    code, _, err = run(capsys, "simulate", "--trace", str(bad))
    assert code == 2 and "line 3" in err and "num_prefill_tokens" in err


def test_bad_policy_file_is_one_line(capsys, tmp_path):
    bad = tmp_path / "p.py"
    bad.write_text("def partition(replica, params)\n    return 1\n")
    code, _, err = run(capsys, "simulate", "--policy", str(bad), "--requests", "10")
    assert code == 2 and "syntax error" in err and len(err.strip().splitlines()) == 1


def test_illegal_decision_exits_failed_with_reason(capsys, tmp_path):
    pol = tmp_path / "p.py"
    pol.write_text("TUNABLES = {}\n\ndef route(request, cluster, params):\n    return 99\n")
    code, _, err = run(capsys, "simulate", "--policy", str(pol), "--requests", "10")
    assert code == 1 and "route(request 0" in err and "does not exist" in err


@pytest.mark.skipif(not (SHARED / "traces").is_dir(), reason="../shared/data is absent")
@pytest.mark.parametrize("trace", ["azure_conv_2023.csv", "mooncake_conversation.jsonl"])
def test_simulate_real_traces(capsys, trace):
    code, out, err = run(capsys, "simulate", "--trace", str(SHARED / "traces" / trace),
                         "--requests", "300", "--rate-scale", "2", "--json")
    assert code == 0, err
    assert json.loads(out)["metrics"]["requests"] == 300


@pytest.mark.parametrize("module", ["autotuner", "autotuner.commands"])
def test_console_script_runs(module):
    proc = subprocess.run([sys.executable, "-m", module, "workloads"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "chat" in proc.stdout


# ------------------------------------------------------------------ policy files run sandboxed
ESCAPE = '''TUNABLES = {}


def route(request, cluster, params):
    for cls in ().__class__.__base__.__subclasses__():
        if cls.__name__ == "_wrap_close":
            cls.__init__.__globals__["__builtins__"]["open"](TARGET, "w").write("escaped")
    return 0
'''


def test_simulate_never_runs_a_user_file_unchecked_or_unsandboxed(capsys, tmp_path):
    target = tmp_path / "written_by_the_policy"
    policy = tmp_path / "escape.py"
    policy.write_text(ESCAPE.replace("TARGET", repr(str(target))))
    code, out, err = run(capsys, "simulate", "--policy", str(policy), "--requests", "20")
    assert code == 2 and not target.exists(), err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "refused by the static check" in lines[0]
    assert "__subclasses__" in lines[0] and "Traceback" not in err
    # the payload is real: run in this process on purpose, it does write on the host
    code, _, err = run(capsys, "simulate", "--policy", str(policy), "--requests", "20",
                       "--trusted")
    assert code == 0, err
    assert target.read_text() == "escaped"


def test_trusted_is_explained_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--trusted" in text and "in THIS process" in text and "without the static check" in text


def test_simulate_of_a_user_file_runs_in_the_sandbox_with_the_same_metrics(capsys, tmp_path):
    from autotuner.resources import baseline_path

    policy = tmp_path / "mine.py"
    policy.write_text(baseline_path("least_outstanding").read_text())
    argv = ["simulate", "--policy", str(policy), "--workload", "multiturn", "--requests", "60",
            "--replicas", "2", "--json"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    sandboxed = json.loads(out)
    assert sandboxed["isolation"].startswith("sandbox ")
    code, out, err = run(capsys, *argv, "--trusted")
    assert code == 0, err
    trusted = json.loads(out)
    assert trusted["isolation"].startswith("this process")
    assert sandboxed["metrics"] == trusted["metrics"]


def test_simulate_capacity_of_a_user_file_goes_through_the_sandbox(capsys, tmp_path):
    from autotuner.resources import baseline_path

    policy = tmp_path / "mine.py"
    policy.write_text(baseline_path("fixed_chunk").read_text())
    argv = ["simulate", "--policy", str(policy), "--requests", "60", "--replicas", "1",
            "--capacity", "--json"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    sandboxed = json.loads(out)
    code, out, err = run(capsys, *argv[:2], "fixed_chunk", *argv[3:])
    assert code == 0, err
    shipped = json.loads(out)
    assert shipped["isolation"] == "this process, no sandbox (a shipped baseline)"
    assert sandboxed["isolation"].startswith("sandbox ")
    assert sandboxed["capacity"] == shipped["capacity"] and sandboxed["capacity"]["rate"] > 0


@pytest.mark.parametrize("argv", [
    ["simulate", "--policy", "{policy}", "--requests", "20"],
    ["evaluate", "--policy", "{policy}", "--requests", "20"],
    ["replay", "{policy}", "--workload", "multiturn", "--requests", "20", "--parallelism", "1"],
])
def test_no_command_runs_the_escape_on_the_host(capsys, tmp_path, argv, monkeypatch):
    target = tmp_path / "written_by_the_policy"
    policy = tmp_path / "escape.py"
    policy.write_text(ESCAPE.replace("TARGET", repr(str(target))))
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *[a.replace("{policy}", str(policy)) for a in argv])
    assert code != 0 and not target.exists(), out + err
    assert "__subclasses__" in out + err and "Traceback" not in err
