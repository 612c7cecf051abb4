"""Campaign configuration: frozen records loaded from TOML, validated, and written back as run.

Read in this order: ``records`` (one frozen record per TOML table; each field's docstring entry
says what it means and where its default comes from), ``validation`` (bounds and cross-field
rules; every refusal is one ``ConfigError`` line naming the key), ``files`` (reading a campaign
file with dotted-key overrides, and writing the config as run, which ``autotuner resume`` reads
back). Every field has a default, so ``autotuner run`` needs no file at all; unknown keys, values
of the wrong type and keys that would have no effect are refused.
"""

from autotuner.config.files import config_from_mapping, dumps, load_config, to_dict, write_config
from autotuner.config.records import (
    SCENARIO_NAMES,
    BudgetConfig,
    CampaignConfig,
    ClusterConfig,
    GateConfig,
    ObjectiveConfig,
    OfflineConfig,
    ProposerConfig,
    SandboxConfig,
    SearchConfig,
    SLOConfig,
    WorkloadsConfig,
)
from autotuner.config.validation import EXECUTORS, ConfigError, policy_file, validate

__all__ = [
    "EXECUTORS",
    "SCENARIO_NAMES",
    "BudgetConfig",
    "CampaignConfig",
    "ClusterConfig",
    "ConfigError",
    "GateConfig",
    "ObjectiveConfig",
    "OfflineConfig",
    "ProposerConfig",
    "SLOConfig",
    "SandboxConfig",
    "SearchConfig",
    "WorkloadsConfig",
    "config_from_mapping",
    "dumps",
    "load_config",
    "policy_file",
    "to_dict",
    "validate",
    "write_config",
]
