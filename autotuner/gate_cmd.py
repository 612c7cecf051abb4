"""``autotuner gate --policy FILE``: the promotion gate on any policy file.

The question a user asks of a hand-written policy: would the campaign promote it? The file runs
at its own defaults (a promoted file has its tuned values baked in) through the same sandbox,
held-out instances, tuned baseline, tuned reference policies and conditions as the campaign's
gate, and every condition is printed with the figures that decided it.

With ``--campaign NAME`` the campaign's tuned baseline and references are used, and its
evaluation cache is read (never written: the campaign may be running). Otherwise the baseline and
the references are tuned here with the config's budget, as a campaign would tune them.

Exit status: 0 the gate passes, 1 it refuses, 2 usage or bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from autotuner.config import CampaignConfig, ConfigError, load_config

EXIT_PASS, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


class GateCommandError(RuntimeError):
    """Bad input for ``autotuner gate``; the message is the one line printed."""


def add_gate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", required=True, metavar="FILE",
                   help="the policy file to judge (it runs at its declared defaults)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", metavar="TOML", help="campaign file: cluster, SLO, workloads, "
                   "budget and gate settings (default: the built-in defaults); the baseline and "
                   "references are tuned here with its budget")
    g.add_argument("--campaign", metavar="NAME", help="judge against this campaign's tuned "
                   "baseline and references, on its held-out workloads")
    p.add_argument("--sandbox", choices=["auto", "bwrap", "docker", "process"],
                   help="isolation backend (default: the config's)")
    p.add_argument("--parallelism", type=int, help="simulations at once (default: the "
                   "config's)")
    p.add_argument("--json", action="store_true", help="the full gate result as JSON")


class _ReadOnlyCache:
    """The campaign's evaluation cache, read only; new results stay in memory."""

    def __init__(self, archive: Any):
        self.archive = archive
        self.mine: dict[str, dict[str, Any]] = {}

    def get_evaluations(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        found = self.archive.get_evaluations(keys)
        return found | {k: self.mine[k] for k in keys if k in self.mine}

    def put_evaluation(self, key: str, **kwargs: Any) -> None:
        self.mine[key] = kwargs["result"]


class _MemoryCache(_ReadOnlyCache):
    def __init__(self) -> None:
        super().__init__(None)

    def get_evaluations(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {k: self.mine[k] for k in keys if k in self.mine}


def _read_candidate(path: str) -> Any:
    from autotuner.check import check_policy
    from autotuner.policy import PolicyFileError, read_policy_file

    try:
        source = read_policy_file(path)
    except PolicyFileError as exc:
        raise GateCommandError(str(exc)) from None
    checked = check_policy(source.code, Path(path).name)
    if not checked.ok:
        raise GateCommandError(f"{path}: not a valid policy file: {checked.reasons()[0]}")
    return source


def _log(stream: TextIO, text: str) -> None:
    stream.write(f"gate: {text}\n")
    stream.flush()


class _Setup:
    """Config, evaluator, tuned baseline and tuned references for one gate run."""

    def __init__(self, args: argparse.Namespace, simulator: Any, log: TextIO):
        from dataclasses import replace

        from autotuner.scoring import Evaluator

        self.log = log
        self.archive: Any = None
        if args.campaign:
            from autotuner.archive import Archive
            from autotuner.campaign import CampaignError, campaign_dir

            try:
                folder = campaign_dir(args.campaign)
            except CampaignError as exc:
                raise GateCommandError(str(exc)) from None
            if not (folder / "archive.sqlite").is_file():
                raise GateCommandError(f"{folder}: no archive.sqlite (the campaign never "
                                       "started)")
            cfg = load_config(folder / "config.toml", name=folder.name,
                              results_dir=str(folder.parent))
            self.archive = Archive(folder / "archive.sqlite")
            cache: Any = _ReadOnlyCache(self.archive)
        else:
            cfg = load_config(args.config)
            cache = _MemoryCache()
        if args.sandbox:
            cfg = replace(cfg, sandbox=replace(cfg.sandbox, backend=args.sandbox))
        if args.parallelism is not None and args.parallelism < 1:
            raise GateCommandError("--parallelism must be at least 1")
        self.cfg: CampaignConfig = cfg
        self.evaluator = Evaluator(cache, args.parallelism or cfg.parallelism, simulator)

    def close(self) -> None:
        self.evaluator.close()
        if self.archive is not None:
            self.archive.close()

    def baseline(self) -> tuple[Any, dict[str, float], dict[str, list[float]], str]:
        """(tuned baseline, its training capacities, its training ladder goodput, where from)"""
        import optuna

        from autotuner.scoring import split_instances
        from autotuner.yardstick import TunedPolicy, read_named_policy, tune_baseline

        if self.archive is not None:
            meta = self.archive.get_meta("baseline")
            if not meta:
                raise GateCommandError("the campaign's baseline is not tuned yet")
            tuned = TunedPolicy(meta["name"], meta["code"], dict(meta["params"]), 0.0,
                                "the campaign")
            return (tuned, dict(meta["caps"]["train"]), dict(meta["reference"]["train"]),
                    f"tuned by campaign {self.cfg.name}")
        name, code = read_named_policy(self.cfg.objective.baseline)
        _log(self.log, f"tuning the baseline {name} ({self.cfg.budget.trials} trials)")
        result = tune_baseline(self.evaluator, self.cfg, name, code,
                               split_instances(self.cfg)["train"],
                               optuna.storages.InMemoryStorage(),
                               tick=lambda text: _log(self.log, text))
        return (result.policy, result.caps, result.goodput,
                f"tuned here ({self.cfg.budget.trials} trials)")

    def references(self, baseline: Any, caps: Mapping[str, float],
                   goodput: Mapping[str, list[float]]) -> list[Any]:
        import optuna

        from autotuner.scoring import split_instances
        from autotuner.yardstick import tuned_references

        return tuned_references(self.evaluator, self.cfg, split_instances(self.cfg)["train"],
                                baseline, caps, goodput, optuna.storages.InMemoryStorage(),
                                "autotuner gate", archive=self.archive,
                                log=lambda text: _log(self.log, text))


def run_gate_command(args: argparse.Namespace, out: TextIO | None = None,
                     log: TextIO | None = None, simulator: Any = None) -> int:
    """``autotuner gate``: 0 passes, 1 refuses, 2 usage or bad input (one line on stderr)."""
    from autotuner.campaign import CampaignError
    from autotuner.gate import GateInputError
    from autotuner.yardstick import YardstickError

    out, log = out or sys.stdout, log or sys.stderr
    setup = None
    try:
        source = _read_candidate(args.policy)
        setup = _Setup(args, simulator, log)
        return _judge(args, setup, source, out)
    except (GateCommandError, GateInputError, YardstickError, ConfigError,
            CampaignError) as exc:
        print(f"autotuner gate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if setup is not None:
            setup.close()


def _judge(args: argparse.Namespace, setup: _Setup, source: Any, out: TextIO) -> int:
    from autotuner.gate import PolicyRef, run_gate
    from autotuner.scoring import split_instances

    cfg = setup.cfg
    baseline, caps, goodput, where = setup.baseline()
    references = [r.ref() for r in setup.references(baseline, caps, goodput)]
    instances = split_instances(cfg)["heldout"]
    _log(setup.log, f"held-out capacities on {len(instances)} instances")
    candidate = PolicyRef(Path(args.policy).name, source.code, source.defaults())
    result = run_gate(setup.evaluator, cfg, "candidate", candidate, baseline.ref(), instances,
                      references=references)
    if args.json:
        out.write(json.dumps({"policy": args.policy, "params": dict(candidate.params),
                              "baseline": {"name": baseline.name,
                                           "params": dict(baseline.params), "from": where},
                              "result": result.to_dict()}, indent=2, default=str) + "\n")
    else:
        print_gate(out, args.policy, candidate.params, baseline, where, result, cfg)
    return EXIT_PASS if result.passed else EXIT_REFUSED


def print_gate(out: TextIO, policy: str, params: Mapping[str, Any], baseline: Any, where: str,
               result: Any, cfg: CampaignConfig) -> None:
    """Each condition with its figures, then the claim per instance beside the fairness
    figures a capacity alone hides."""
    from autotuner.review import fairness_lines

    def text(p: Mapping[str, Any]) -> str:
        return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in sorted(p.items())) or "no tunables"

    out.write(f"policy     {policy} ({text(params)})\n")
    out.write(f"baseline   {baseline.name} ({text(baseline.params)}), {where}\n")
    for stem, row in result.references.items():
        mark = "  <- best" if stem == result.reference else ""
        err = f"  error: {row['error']}" if row.get("error") else ""
        out.write(f"reference  {stem} ({text(row['params'])}): {row['mean_gain']:+.1%} over the "
                  f"baseline{mark}{err}\n")
    out.write(f"held-out   {len(result.instances)} instances; SLO share {cfg.slo.share:g}\n\n")
    out.write("conditions (judged at the candidate's own claimed capacity, then across "
              "workloads):\n")
    for condition in result.conditions:
        out.write(f"  {condition.line()}\n")
    out.write("\nat the claimed capacity, per instance:\n")
    for line in fairness_lines(result.baseline.capacities, result.at_claim):
        out.write(f"  {line}\n")
    verdict = "PASSES" if result.passed else f"REFUSED ({', '.join(result.failed())})"
    out.write(f"\ngate: {verdict}\n")


__all__ = ["add_gate_arguments", "print_gate", "run_gate_command"]
