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


def test_every_field_is_documented_in_its_docstring():
    for section, cls in _sections():
        if cls.__module__ != C.__name__:
            continue  # LLMConfig documents itself (autotuner.proposers.llm)
        docs = C.field_docs(cls)
        nested = {f.name for f in dataclasses.fields(cls)
                  if f.default_factory is not dataclasses.MISSING
                  and dataclasses.is_dataclass(f.default_factory())}
        for f in dataclasses.fields(cls):
            if f.name in nested and cls is CampaignConfig:
                continue  # sections are documented by their own classes
            assert docs.get(f.name), f"{section or 'top level'}.{f.name} has no documentation"


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


def test_requests_per_scenario():
    w = load_config(**{"workloads.scenario_requests": {"chat": 50}}).workloads
    assert w.requests_for("chat") == 50
    assert w.requests_for("summarize") == w.requests
