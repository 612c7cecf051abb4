"""``autotuner export``: projections onto each engine's knobs, re-simulated with the campaign's
yardstick; bad input is one line and exit 2 with nothing written; the vLLM scheduler module
imports and steps against stub vLLM modules (vLLM itself cannot be imported here).

Simulations run trusted files in process (``scoring.in_process``) on small multiturn instances,
as the gate's command tests do.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from autotuner.check import check_policy
from autotuner.commands.export import run as run_export
from autotuner.commands.main import main
from autotuner.export import TARGETS
from autotuner.export.vllm_module import MODULE_NAME, scheduler_module
from autotuner.resources import baseline_path
from autotuner.scoring import in_process

HERE = Path(__file__).resolve().parent
HONEST = HERE / "gaming" / "honest_cache_aware.py"
CONFIG = ('parallelism = 1\n[workloads]\nscenarios = ["multiturn"]\nscreen = []\nrequests = 300\n'
          'scenario_requests = {}\nheldout_requests = {}\nheldout_seeds = [1001, 1002, 1003]\n'
          '[objective]\nladder = [1.0, 1.5]\n[budget]\ntrials = 1\n'
          '[gate]\nbootstrap = 500\ncapacity_rel_tol = 0.05\nreferences = []\n')
LINE = re.compile(r"^(?P<label>.+) keeps? (?P<kept>[+-]\d+\.\d) % of (?P<gain>[+-]\d+\.\d) %")


def export(tmp: Path, policy: Path, targets: list[str], out: Path, as_json: bool = False
           ) -> tuple[int, str, str]:
    config = tmp / "tiny.toml"
    config.write_text(CONFIG)
    args = argparse.Namespace(subject=None, policy=str(policy), config=str(config),
                              target=targets, out=str(out), sandbox=None, parallelism=1,
                              json=as_json)
    out_text, log = io.StringIO(), io.StringIO()
    rc = run_export(args, out_text, log, simulator=in_process)
    return rc, out_text.getvalue(), log.getvalue()


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    rc, out, log = export(tmp, HONEST, ["all"], tmp / "out", as_json=True)
    assert rc == 0, log
    return json.loads(out), tmp / "out"


def test_every_target_writes_its_files_and_a_measured_survival_line(honest):
    data, out = honest
    assert list(data["targets"]) == list(TARGETS)
    gain = data["policy_gain"]["mean"]
    assert gain > 0.2  # the honest router gains clearly on multi-turn sessions
    for target, row in data["targets"].items():
        folder = out / target
        assert sorted(p.name for p in folder.iterdir()) == row["files"]
        m = LINE.match(row["line"])
        assert m, row["line"]
        assert float(m["gain"]) == pytest.approx(gain * 100, abs=0.051)
        assert float(m["kept"]) == pytest.approx(row["gain"]["mean"] * 100, abs=0.051)
        # the projection re-simulated is a valid policy file of our own format, as written
        code = (folder / "projection.py").read_text()
        assert check_policy(code, "projection.py").ok
        assert (folder / "NOTES.txt").read_text().startswith(row["line"])
        # what the target cannot express is said, line by line (this router is none of theirs)
        assert any(x.startswith("route(): ") for x in row["lost"]), row["lost"]
    # the production-stack module runs the policy's own route(): on the simulator's exact view
    # (and with vLLM's flags at the file's own chunk size) it makes exactly the policy's
    # decisions; on the view a production-stack router has, it loses some of the gain
    ps = data["targets"]["production-stack"]
    (exact,) = ps["alternatives"]
    assert exact["capacities"] == data["capacities"]["policy"]
    assert ps["gain"]["mean"] < exact["gain"]["mean"]


def test_emitted_configuration_uses_the_engines_documented_names(honest):
    _, out = honest
    serve = (out / "vllm" / "serve.sh").read_text()
    assert "--max-num-batched-tokens 2048" in serve  # the honest file's own chunk size
    assert "--scheduler-cls autotuner_scheduler.AutotunerScheduler" in \
        (out / "vllm" / "serve-with-scheduler.sh").read_text()
    gateway = (out / "sglang" / "gateway.sh").read_text()
    for flag in ("--policy cache_aware", "--cache-threshold", "--balance-abs-threshold",
                 "--balance-rel-threshold"):
        assert flag in gateway
    assert "--chunked-prefill-size" in (out / "sglang" / "server.sh").read_text()
    epp = (out / "llm-d" / "epp-config.yaml").read_text()
    assert epp.startswith("apiVersion: inference.networking.x-k8s.io/v1alpha1\n"
                          "kind: EndpointPickerConfig\n")
    assert "max-score-picker" in epp and "weight: " in epp
    frontend = (out / "dynamo" / "frontend.sh").read_text()
    for flag in ("--router-mode kv", "--router-prefill-load-scale",
                 "--router-kv-overlap-score-credit", "--router-temperature 0"):
        assert flag in frontend
    module = (out / "production-stack" / "autotuner_routing.py").read_text()
    assert "class AutotunerRouter(routing_logic.RoutingInterface)" in module
    compile(module, "autotuner_routing.py", "exec")


def test_a_policy_the_target_expresses_exactly_keeps_all_of_its_gain(tmp_path):
    """Least-outstanding routing with the baseline's batching is exactly what a balancer in front
    of vLLM does: its projection makes the same decisions, so it keeps the whole gain (a share
    of 100 %, not more) and no routing decision is listed as lost."""
    rc, out, log = export(tmp_path, baseline_path("least_outstanding"), ["vllm"], tmp_path / "o",
                          as_json=True)
    assert rc == 0, log
    data = json.loads(out)
    row = data["targets"]["vllm"]
    assert row["knobs"]["balancer"] == "least outstanding requests"
    assert row["capacities"] == data["capacities"]["policy"]
    assert row["gain"]["mean"] == pytest.approx(data["policy_gain"]["mean"])
    assert not [x for x in row["lost"] if x.startswith("route()")]


def test_the_vllm_scheduler_module_keeps_what_a_per_step_budget_expresses(tmp_path):
    """Sarathi's shrinking chunk varies the budget with the decode count: one
    --max-num-batched-tokens cannot say that, the --scheduler-cls module (re-simulated as its
    step: the policy's budget and largest chunk, vLLM's first-come-first-served fill) can, and
    makes exactly the policy's decisions."""
    rc, out, log = export(tmp_path, baseline_path("sarathi_shrinking"), ["vllm"], tmp_path / "o",
                          as_json=True)
    assert rc == 0, log
    data = json.loads(out)
    row = data["targets"]["vllm"]
    assert any(x.startswith("partition(): the budget varies per iteration") for x in row["lost"])
    (alt,) = row["alternatives"]
    assert alt["label"] == "vLLM --scheduler-cls module"
    assert alt["capacities"] == data["capacities"]["policy"]
    assert LINE.match(alt["line"])
    assert check_policy((tmp_path / "o" / "vllm" / "projection-1.py").read_text(), "p.py").ok


def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys):
    out = tmp_path / "never"
    for argv, needle in (
        (["export", "--policy", str(HONEST), "--target", "trt-llm", "--out", str(out)],
         "unknown target 'trt-llm'"),
        (["export", "--policy", str(tmp_path / "missing.py"), "--target", "vllm", "--out",
          str(out)], "no such policy file"),
        (["export", "nope:c0001", "--target", "vllm", "--out", str(out)], "no campaign 'nope'"),
        (["export", "--target", "vllm", "--out", str(out)], "CAMPAIGN:CANDIDATE or --policy"),
        (["export", "--policy", str(HONEST), "--out", str(out)], "no target given"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("autotuner export: error: ") and needle in err, err
        assert err.count("\n") == 1
    assert not out.exists()


def test_a_policy_that_fails_in_simulation_leaves_nothing_behind(tmp_path):
    broken = tmp_path / "breaks_later.py"
    broken.write_text('"""Fails on its 50th arrival."""\n\nTUNABLES = {}\n\n\n'
                      "def route(request, cluster, params):\n"
                      "    if request.id > 50:\n        raise ValueError('boom')\n"
                      "    return 0\n")
    rc, _, _ = export(tmp_path, broken, ["vllm"], tmp_path / "out")
    assert rc == 2
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


# ---------------------------------------------------------------- the vLLM scheduler module
def _stub_vllm(root: Path) -> None:
    """Just enough of vLLM 0.11's module layout for the module to import and step."""
    sched = root / "vllm" / "v1" / "core" / "sched"
    sched.mkdir(parents=True)
    (root / "vllm" / "__init__.py").write_text('__version__ = "0.11.0"\n')
    for pkg in (root / "vllm" / "v1", root / "vllm" / "v1" / "core", sched):
        (pkg / "__init__.py").touch()
    (sched / "scheduler.py").write_text(
        "class Scheduler:\n"
        "    def schedule(self):\n"
        "        return (self.max_num_scheduled_tokens,\n"
        "                self.scheduler_config.long_prefill_token_threshold)\n")
    (sched / "async_scheduler.py").write_text(
        "from vllm.v1.core.sched.scheduler import Scheduler\n\n\n"
        "class AsyncScheduler(Scheduler):\n    pass\n")


def _request(rid: str, prompt: int, computed: int, arrival: float) -> SimpleNamespace:
    return SimpleNamespace(request_id=rid, num_prompt_tokens=prompt, num_computed_tokens=computed,
                           num_tokens=max(prompt, computed), arrival_time=arrival,
                           num_cached_tokens=0)


def test_the_vllm_scheduler_module_asks_partition_each_step(tmp_path, monkeypatch):
    _stub_vllm(tmp_path)
    folder = tmp_path / "export"
    folder.mkdir()
    # a policy whose budget depends on the queue: 256 tokens per waiting prompt, chunks of 100
    (folder / "policy.py").write_text(
        "TUNABLES = {'per': {'type': 'int', 'low': 1, 'high': 4096, 'default': 256}}\n\n\n"
        "def partition(replica, params):\n"
        "    budget = replica.decodes + params['per'] * replica.waiting_count\n"
        "    return (budget, tuple((w.id, min(100, w.remaining)) for w in replica.waiting))\n")
    (folder / f"{MODULE_NAME}.py").write_text(scheduler_module("test", {"per": 300}))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(folder))
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    module = importlib.import_module(MODULE_NAME)
    sched = module.AutotunerScheduler()
    sched.scheduler_config = SimpleNamespace(max_num_batched_tokens=8192,
                                             long_prefill_token_threshold=0)
    sched.cache_config = SimpleNamespace(block_size=16)
    sched.kv_cache_manager = SimpleNamespace(block_pool=SimpleNamespace(
        get_num_free_blocks=lambda: 1000, num_gpu_blocks=2000))
    sched.max_num_scheduled_tokens = 8192
    sched.running = [_request("decoding", 50, 60, 0.0), _request("halfway", 500, 200, 1.0)]
    sched.waiting = [_request("new", 800, 0, 2.0)]
    # one decode, two prompts with prefill left: budget 1 + 2 x 300, cap 100 (largest chunk)
    assert sched.schedule() == (601, 100)
    assert sched.max_num_scheduled_tokens == 8192  # restored after the step
    assert sched.scheduler_config.long_prefill_token_threshold == 0
    sched._autotuner_partition = lambda view: (0, ())  # a budget below the decodes
    assert sched.schedule() == (1, 0)  # decodes still run (one here), as in the simulator
    sched._autotuner_partition = lambda view: 1 / 0  # a failing policy: vLLM's own step
    assert sched.schedule() == (8192, 0) and module.AutotunerScheduler.FALLBACKS == 1
    sched.waiting, sched.running = [], [_request("decoding", 50, 60, 0.0)]
    assert sched.schedule() == (8192, 0)  # nothing to prefill: vLLM's own step
    assert issubclass(module.AutotunerAsyncScheduler, sys.modules[
        "vllm.v1.core.sched.async_scheduler"].AsyncScheduler)
    monkeypatch.delitem(sys.modules, MODULE_NAME)


# ---------------------------------------------------------------- from a campaign
@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """A tiny campaign (as tests/test_review.py's): one tuned proposal, one the check rejects."""
    from autotuner.campaign import Campaign
    from autotuner.config import load_config
    from autotuner.proposers.base import Proposal

    class Scripted:
        name = "scripted"

        def __init__(self, codes):
            self.codes = list(codes)

        def propose(self, request, check):
            if not self.codes:
                return Proposal(None, False, "no code in reply")
            return Proposal(self.codes.pop(0), True, "", attempts=1, model="scripted")

    root = tmp_path_factory.mktemp("campaign")
    cfg = load_config(**{
        "name": "x", "results_dir": str(root / "results"),
        "workloads.scenarios": ["multiturn"], "workloads.screen": ["multiturn"],
        "workloads.requests": 150, "workloads.scenario_requests": {},
        "workloads.heldout_seeds": [1001, 1002, 1003], "objective.ladder": [1.0, 1.4],
        "budget.trials": 2, "budget.proposals": 2, "search.seeds": [], "search.finalists": 1,
        "gate.bootstrap": 500, "gate.capacity_rel_tol": 0.05, "gate.references": [],
        "parallelism": 1, "search.screen_threshold": -0.5})
    honest = HONEST.read_text()
    rejected = ("import os\n\nTUNABLES = {}\n\n\n"
                "def route(request, cluster, params):\n    return 0\n")
    rc = Campaign(cfg, proposer=Scripted([honest, rejected]), simulator=in_process,
                  stream=io.StringIO(), tty=False).run()
    assert rc == 0
    return cfg


def _campaign_export(cfg, ref: str, out: Path) -> tuple[int, str]:
    args = argparse.Namespace(subject=f"{cfg.campaign_dir}:{ref}", policy=None, config=None,
                              target=["vllm"], out=str(out), sandbox=None, parallelism=1,
                              json=True)
    text = io.StringIO()
    return run_export(args, text, io.StringIO(), simulator=in_process), text.getvalue()


def test_a_campaign_candidate_is_measured_with_the_campaigns_own_yardstick(campaign, tmp_path):
    from autotuner.archive import Archive

    with Archive(campaign.campaign_dir / "archive.sqlite") as archive:
        tuned = [c for c in archive.candidates() if c.train_score is not None
                 and c.id.startswith("c")]
        base = archive.get_meta("baseline")
    assert tuned
    rc, out = _campaign_export(campaign, tuned[0].id, tmp_path / "o")
    assert rc == 0
    data = json.loads(out)
    assert data["subject"].endswith(f"candidate {tuned[0].id}")
    assert data["baseline_from"] == f"tuned by campaign {campaign.name}"
    assert str(base["params"]["chunk_size"]) in data["baseline"]
    assert sorted(data["capacities"]["baseline"]) == ["multiturn@1001", "multiturn@1002",
                                                      "multiturn@1003"]
    assert (tmp_path / "o" / "vllm" / "serve.sh").is_file()


def test_a_candidate_never_evaluated_is_refused(campaign, tmp_path, capsys):
    from autotuner.archive import Archive

    with Archive(campaign.campaign_dir / "archive.sqlite") as archive:
        never = [c for c in archive.candidates() if c.train_score is None]
    assert never, "the fixture's second proposal fails the check"
    rc, _ = _campaign_export(campaign, never[0].id, tmp_path / "o")
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{never[0].id} has not been evaluated" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
    rc, _ = _campaign_export(campaign, "c9999", tmp_path / "o")
    assert rc == 2 and "no candidate 'c9999'" in capsys.readouterr().err
