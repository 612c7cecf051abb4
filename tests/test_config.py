"""Campaign configuration: defaults, TOML loading, clear errors, round trip, documentation."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from autotuner import config as C
from autotuner.config import CampaignConfig, ConfigError, dumps, load_config, write_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "campaign.example.toml"


def _sections(cls: type = CampaignConfig, prefix: str = ""):
    """(dotted section, dataclass) pairs, the top level first."""
    yield prefix, cls
    for f in dataclasses.fields(cls):
        value = getattr(cls(), f.name)
        if dataclasses.is_dataclass(value):
            yield from _sections(type(value), f"{prefix}.{f.name}" if prefix else f.name)


def test_defaults_need_no_file_and_are_realistic():
    cfg = load_config()
    assert cfg == CampaignConfig()
    assert cfg.proposer.kind == "auto"
    assert cfg.cluster.replicas == 4 and cfg.cluster.model == "llama-3-8b"
    assert cfg.cluster.gpu == "h100"
    assert set(cfg.workloads.scenarios) == {"chat", "summarize", "multiturn", "bursty", "mixed"}
    w = cfg.workloads
    assert not set(w.train_seeds) & set(w.heldout_seeds)
    assert not set(w.validation_seeds) & set(w.heldout_seeds)
    assert cfg.gate.margin == 0.05 and cfg.gate.confidence == 0.95
    assert cfg.parallelism == 2
    assert cfg.campaign_dir == Path("results") / "default"


def _field_docs(cls: type) -> dict[str, str]:
    """Field name -> its description, parsed from the class docstring's ``Fields:`` section."""
    doc = cls.__doc__ or ""
    if "Fields:" not in doc:
        return {}
    out: dict[str, str] = {}
    current = None
    for line in doc.split("Fields:", 1)[1].splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        head, sep, rest = stripped.partition(":")
        indent = len(line) - len(line.lstrip())
        if sep and head.isidentifier() and indent <= 8:
            current = head
            out[current] = rest.strip()
        elif current:
            out[current] += " " + stripped
    return out


def test_every_field_is_documented_in_its_docstring():
    documented = 0
    for section, cls in _sections():
        if not cls.__module__.startswith(C.__name__ + "."):
            continue  # LLMConfig documents itself (autotuner.proposers.llm)
        documented += 1
        docs = _field_docs(cls)
        nested = {f.name for f in dataclasses.fields(cls)
                  if f.default_factory is not dataclasses.MISSING
                  and dataclasses.is_dataclass(f.default_factory())}
        for f in dataclasses.fields(cls):
            if f.name in nested and cls is CampaignConfig:
                continue  # sections are documented by their own classes
            assert docs.get(f.name), f"{section or 'top level'}.{f.name} has no documentation"
    assert documented == 11  # every table of autotuner.config, none skipped


def test_example_file_documents_every_field_and_equals_the_defaults():
    text = EXAMPLE.read_text()
    assert load_config(EXAMPLE) == CampaignConfig()
    for section, cls in _sections():
        if section:
            assert f"[{section}]" in text, section
        for f in dataclasses.fields(cls):
            value = getattr(cls(), f.name)
            if dataclasses.is_dataclass(value):
                continue
            assert re.search(rf"^#? ?{f.name} = ", text, re.M), f"{section}.{f.name} missing"


def test_round_trip_through_toml(tmp_path):
    cfg = load_config(**{"name": "x", "budget.proposals": 7, "workloads.heldout_seeds": [5, 6],
                         "gate.margin": 0.1, "budget.usd": 2.5,
                         "proposer.llm.base_url": "http://localhost:1/v1"})
    path = write_config(cfg, tmp_path / "c" / "config.toml")
    again = load_config(path)
    assert again == cfg
    assert again.workloads.heldout_seeds == (5, 6)
    assert tomllib.loads(dumps(cfg))["budget"]["usd"] == 2.5


@pytest.mark.parametrize(
    "text, needle",
    [
        ("bogus = 1\n", "unknown key 'bogus'"),
        ("[workloads]\nscenario = ['chat']\n", "unknown key 'workloads.scenario'"),
        ("[proposer.llm]\nmodle = 'x'\n", "modle"),
        ("[budget]\ntrials = 2.5\n", "budget.trials: expected an integer"),
        ("[budget]\ntrials = true\n", "budget.trials: expected an integer"),
        ("[cluster]\nmodel = 3\n", "cluster.model: expected a string"),
        ("[workloads]\nheldout_seeds = [1, 'a']\n", "workloads.heldout_seeds[1]"),
        ("[workloads]\nscenarios = 'chat'\n", "workloads.scenarios: expected a list"),
        ("[workloads]\ntrain_seeds = [1]\nheldout_seeds = [1]\n", "seeds must differ"),
        ("[workloads]\nscenarios = ['chatty']\n", "unknown scenario 'chatty'"),
        ("[gate]\nconfidence = 1.5\n", "gate.confidence"),
        ("[sandbox]\nbackend = 'chroot'\n", "sandbox.backend"),
        ("[cluster]\ngpu = 'tpu9000'\n", "cluster"),
        ("workloads = 3\n", "workloads: expected a table"),
        ("[workloads.scenario_requests]\nchat = 'many'\n", "workloads.scenario_requests.chat"),
    ],
)
def test_bad_files_give_one_clear_error_naming_the_key(tmp_path, text, needle):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value)


def test_invalid_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[budget\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such campaign file"):
        load_config(tmp_path / "missing.toml")


def test_overrides_win_over_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("name = 'a'\n[budget]\nproposals = 3\ntrials = 4\n")
    cfg = load_config(path, **{"budget.proposals": 9, "name": None})
    assert cfg.budget.proposals == 9 and cfg.budget.trials == 4 and cfg.name == "a"


def test_ints_accepted_for_floats_and_lists_become_tuples(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[objective]\nladder = [1, 2]\n[budget]\nwall_time_s = 60\n")
    cfg = load_config(path)
    assert cfg.objective.ladder == (1.0, 2.0)
    assert isinstance(cfg.budget.wall_time_s, float)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[workloads]\nrequests = 300\n", "workloads.requests: has no effect"),
        ("[slo]\nkind = 'legacy'\ntbt_s = 0.5\n", "slo.tbt_s: has no effect with slo.kind"),
        ("[slo]\nkind = 'legacy'\nwarmup = 0.2\n", "slo.warmup: has no effect"),
        ("[slo]\nkind = 'legacy'\nttft_s_per_token = 0.001\n", "slo.ttft_s_per_token: has no"),
        ("[slo]\nkind = 'legacy'\nmax_backlog_growth = 0.1\n", "slo.max_backlog_growth: has"),
    ],
)
def test_a_key_that_would_change_nothing_is_refused(tmp_path, text, needle):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_requests_take_effect_where_a_scenario_has_no_count_of_its_own():
    w = load_config(**{"workloads.requests": 300, "workloads.scenario_requests": {"chat": 50}}
                    ).workloads
    assert w.requests_for("chat") == 50 and w.requests_for("mixed") == 300
    legacy = load_config(**{"slo.kind": "legacy", "slo.ttft_s": 1.0}).slo
    assert legacy.kind == "legacy" and legacy.ttft_s == 1.0


def test_requests_per_scenario():
    w = load_config(**{"workloads.scenario_requests": {"chat": 50}}).workloads
    assert w.requests_for("chat") == 50
    assert w.requests_for("summarize") == w.requests


# ------------------------------------------------------------------------------- bounds
@pytest.mark.parametrize(
    "text, needle",
    [
        ("parallelism = 100000\n", "parallelism: must be between 1 and 64, got 100,000"),
        ("parallelism = 0\n", "parallelism: must be between 1 and 64"),
        ("seed = -1\n", "seed: must be between 0 and 4,294,967,295"),
        (f"seed = {2**64}\n", "seed: 18446744073709551616 does not fit in 64 bits"),
        (f"name = '{'a' * 300}'\n", "name: must be at most 100 characters"),
        ("[cluster]\nreplicas = 100000\n", "replicas must be at most 1,024"),
        ("[cluster]\nblock_size = 1000000000\n", "cluster.block_size: must be between 1 and"),
        ("[cluster]\nmax_batch_tokens = 1000000000000\n", "cluster.max_batch_tokens"),
        ("[slo]\nttft_s = 1e300\n", "slo.ttft_s: must be at most 3600 s"),
        ("[workloads]\nscenario_requests = { chat = 1000000000000 }\n",
         "workloads.scenario_requests.chat: must be between 10 and 1,000,000"),
        ("[workloads]\nheldout_requests = { chat = 1000000000000 }\n",
         "workloads.heldout_requests.chat: must be between 10 and 1,000,000"),
        ("[workloads]\nrequests = 1000000000000\n", "workloads.requests: must be between 10"),
        ("[workloads]\nscenarios = ['chat', 'chat']\nscreen = ['chat']\n",
         "workloads.scenarios: lists a scenario twice"),
        ("[workloads]\ntrain_seeds = [-1]\n", "workloads.train_seeds: must be between 0"),
        ("[workloads]\nheldout_seeds = [1001, 1001]\n", "workloads.heldout_seeds: lists a seed"),
        ("[workloads]\nheldout_seeds = [" + ", ".join(str(2000 + i) for i in range(101)) + "]\n",
         "workloads.heldout_seeds: has 101 seeds, more than 100"),
        ("[objective]\nladder = [1.0, 1e300]\n", "objective.ladder: must be between 0 and 100"),
        ("[objective]\nbaseline = 'no_such_policy'\n",
         "objective.baseline: no baseline named 'no_such_policy' (known: fixed_chunk"),
        ("[objective]\nbaseline = 'absent/policy.py'\n",
         "objective.baseline: no such policy file 'absent/policy.py'"),
        ("[search]\nseeds = ['no_such_policy']\n", "search.seeds: no baseline named"),
        ("[search]\nseeds = ['absent.py']\n", "search.seeds: no such policy file 'absent.py'"),
        ("[search]\nislands = 1000000\n", "search.islands: must be between 1 and 64"),
        ("[search]\nin_flight = 1000000\n", "search.in_flight: must be between 1 and 64"),
        ("[proposer.offline]\nseed = -5\n", "proposer.offline.seed: must be between 0"),
        ("[budget]\ntrials = 1000000000\n", "budget.trials: must be between 1 and 10,000"),
        ("[budget]\nproposals = 1000000000000\n", "budget.proposals: must be between 0"),
        ("[budget]\nwall_time_s = 1e300\n", "budget.wall_time_s: must be between"),
        (f"[budget]\ntokens = {2**64}\n", "budget.tokens: 18446744073709551616 does not fit"),
        ("[gate]\nbootstrap = 1000000000000\n", "gate.bootstrap: must be between 100 and"),
        (f"[sandbox]\nmemory_mb = {2**50}\n", "sandbox.memory_mb: must be between 64 and"),
        ("[sandbox]\ntimeout_s = 1e9\n", "sandbox.timeout_s: must be between"),
    ],
)
def test_out_of_bounds_values_are_refused_naming_the_key(tmp_path, text, needle):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert needle in str(err.value)


def test_the_bounds_admit_the_values_the_repository_uses():
    cfg = load_config(**{"parallelism": 64, "seed": 2**32 - 1, "workloads.requests": 1_000_000,
                         "workloads.scenario_requests": {},
                         "gate.bootstrap": 1_000_000, "search.seeds": ["least_outstanding",
                                                                        "prefix_aware"]})
    assert cfg.parallelism == 64 and cfg.workloads.requests == 1_000_000


# ------------------------------------------------------------------------------- traces
CSV_HEADER = "arrived_at,num_prefill_tokens,num_decode_tokens\n"


def _trace_config(tmp_path, rows: str, name: str = "t.csv", **extra) -> Path:
    trace = tmp_path / name
    trace.write_text(rows)
    path = tmp_path / "c.toml"
    lines = [f"[workloads]\ntraces = ['{trace}']"] + [f"{k} = {v}" for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _steady(n: int = 50, prompt=lambda i: 100) -> str:
    return CSV_HEADER + "".join(f"{i}.0,{prompt(i)},10\n" for i in range(n))


def test_a_good_trace_is_accepted(tmp_path):
    cfg = load_config(_trace_config(tmp_path, _steady()))
    assert len(cfg.workloads.traces) == 1


@pytest.mark.parametrize(
    "rows, needle",
    [
        (_steady() + "50.0,abc,5\n", "workloads.traces: "),
        (_steady() + f"50.0,{2**63},5\n", "line 52: field 'num_prefill_tokens'"),
        (_steady() + "50.0,1000000000000,5\n", "10,000,000"),
        (CSV_HEADER + "0.0,100,10\n", "holds one request"),
        (CSV_HEADER + "0.0,100,10\n0.1,100,10\n100.0,100,10\n",
         "workloads.validation_window: "),
        (_steady(prompt=lambda i: 2_000_000 if i == 30 else 100),
         "1 request(s) need more KV cache than a replica holds"),
    ],
    ids=["malformed", "2^63", "1e12", "one-request", "empty-window", "kv-cache"],
)
def test_a_bad_trace_is_refused_when_the_config_loads(tmp_path, rows, needle):
    """Before any folder or worker exists: a trace failing inside a pool worker used to break the
    pool (its TraceError could not be unpickled)."""
    with pytest.raises(ConfigError) as err:
        load_config(_trace_config(tmp_path, rows))
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_a_deeply_nested_jsonl_trace_is_refused_when_the_config_loads(tmp_path):
    ok = "".join(f'{{"timestamp": {i * 1000}, "input_length": 5, "output_length": 3}}\n'
                 for i in range(20))
    path = _trace_config(tmp_path, ok + "[" * 100_000 + "]" * 100_000 + "\n", "t.jsonl")
    with pytest.raises(ConfigError, match="line 21: JSON nested too deeply"):
        load_config(path)


def test_a_trace_listed_twice_is_refused(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text(_steady())
    path = tmp_path / "c.toml"
    path.write_text(f"[workloads]\ntraces = ['{trace}', '{trace}']\n")
    with pytest.raises(ConfigError, match="lists a trace twice"):
        load_config(path)
