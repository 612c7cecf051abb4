"""The campaign loop: propose, check, screen, tune, archive; then validate finalists and gate.

::

    baseline (tuned, same trial budget) ─► seeds ─► search ─────────────────────► finalize
                                                    │ pick parent (islands)        validation
                                                    │ propose (several in flight)  re-rank
                                                    │ check (reasons back)         gate on held-out
                                                    │ screen (cheap workload)      promote
                                                    │ tune (Optuna, training set)
                                                    └ archive everything

Every step leaves its result in the archive (SQLite) or Optuna's journal before the next starts,
and every simulation is cached by its inputs, so ``autotuner resume`` after a kill (even SIGKILL)
picks up where the campaign stopped: the phase is in the archive, half-screened or half-tuned
candidates continue, and no finished evaluation runs again. The proposer runs in daemon threads
(an LLM is slow); all archive writes happen on the main thread.

A new campaign's folder appears only once its setup has passed: the preflight (policy files
present and accepted by the check, traces readable, a sandbox, one round trip to a configured
LLM endpoint) before anything is written, then the baseline's first evaluation in a hidden
staging folder beside it, renamed into place when that succeeds. A failed setup leaves nothing,
and the same command can simply be run again; a setup killed half-way leaves a staging folder
that the next run of that name removes.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import math
import os
import queue
import random
import shutil
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from autotuner import archive as A
from autotuner.archive import Archive, Candidate
from autotuner.config import (
    CampaignConfig,
    ConfigError,
    load_config,
    policy_file,
    write_config,
)
from autotuner.gate import GateInputError, PolicyRef, run_gate, write_promotion
from autotuner.policy import PolicyFileError, Tunable, read_policy_source
from autotuner.proposers.base import (
    ClusterInfo,
    Objective,
    ParentInfo,
    Proposal,
    ProposalRequest,
    Proposer,
    WorkloadInfo,
)
from autotuner.proposers.prompt import brief
from autotuner.scoring import (
    Evaluator,
    Instance,
    Simulator,
    ladder_jobs,
    ladder_scores,
    split_instances,
)
from autotuner.tune import open_storage, repair_journal, tune
from autotuner.yardstick import (
    TunedPolicy,
    YardstickError,
    capacities,
    from_campaign,
    ladder_goodput,
    read_named_policy,
    reference_names,
    tune_baseline,
    tuned_references,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PHASES = ("baseline", "seeds", "search", "finalize", "done")
ABANDON_GRACE_S = 60.0  # how long proposals still in flight may finish after the search ends
LLM_PREFLIGHT_TIMEOUT_S = 20.0  # the setup's test request to a configured LLM endpoint


class CampaignError(RuntimeError):
    """An expected failure with a message for the user (exists, locked, missing)."""


def one_line(text: object) -> str:
    """A message as one line (an exception's text can span several)."""
    return " ".join(str(text).split())


def staging_dir(folder: Path) -> Path:
    """Where a new campaign is set up: a hidden sibling of its folder, renamed into place once
    the setup has passed, so that ``results/<name>/`` never holds a half-made campaign."""
    return folder.parent / f".{folder.name}.setup"




class WorkloadRefused(CampaignError):
    """The tuned baseline cannot serve as a yardstick on a workload (it fails there, or has
    (nearly) no capacity): the campaign stops before searching, and a new one leaves no folder."""


# ------------------------------------------------------------------------------- progress
class Progress:
    """Permanent lines for events; on a terminal also a live status line, rewritten in place.

    Off a terminal (piped, CI, a log file) there is no carriage-return trickery: events only,
    plus the status as a plain line every ``plain_every`` seconds.
    """

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None,
                 plain_every: float = 30.0):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.plain_every = plain_every
        self._last_plain = time.monotonic()
        self._status = ""
        self._lock = threading.Lock()

    def log(self, message: str) -> None:
        with self._lock:
            if self.tty and self._status:
                self.stream.write("\r\x1b[K")
            self.stream.write(message + "\n")
            if self.tty and self._status:
                self.stream.write(self._status)
            self.stream.flush()

    def status(self, text: str) -> None:
        with self._lock:
            if self.tty:
                width = _term_width()
                self._status = text if len(text) < width else text[: width - 1]
                self.stream.write("\r\x1b[K" + self._status)
                self.stream.flush()
            elif time.monotonic() - self._last_plain >= self.plain_every:
                self._last_plain = time.monotonic()
                self.stream.write(text + "\n")
                self.stream.flush()

    def clear(self) -> None:
        with self._lock:
            if self.tty and self._status:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            self._status = ""


def _term_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 120


def _fmt_gain(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:+.1%}"


def _fmt_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


# ------------------------------------------------------------------------------- proposers
def make_proposer(cfg: CampaignConfig, spent: Mapping[str, float] | None = None
                  ) -> tuple[Proposer, str]:
    """The configured proposer and one line saying which it is (and why)."""
    from autotuner.proposers.llm import LLMConfig, LLMProposer, Spend

    seed = cfg.seed if cfg.proposer.llm.seed is None else cfg.proposer.llm.seed
    llm = dataclasses.replace(cfg.proposer.llm, token_budget=cfg.budget.tokens,
                              usd_budget=cfg.budget.usd, seed=seed)
    kind = cfg.proposer.kind
    configured = llm.endpoint_configured()
    if kind == "llm" or (kind == "auto" and configured):
        spend = Spend(int((spent or {}).get("prompt_tokens", 0)),
                      int((spent or {}).get("completion_tokens", 0)),
                      float((spent or {}).get("cost_usd", 0.0)))
        try:
            proposer = LLMProposer(llm, spent=spend)
        except ValueError as exc:
            raise CampaignError(f"LLM proposer: {exc}") from None
        return proposer, f"LLM proposer: model {proposer.model} at {proposer.endpoint}"
    assert isinstance(llm, LLMConfig)
    proposer = _offline_proposer(cfg)
    why = ("no LLM endpoint configured" if kind == "auto" else "proposer.kind = \"offline\"")
    return proposer, f"offline proposer ({why})"


def _offline_proposer(cfg: CampaignConfig) -> Proposer:
    try:
        from autotuner.proposers import offline
    except ImportError as exc:  # pragma: no cover - until the offline proposer lands
        raise CampaignError(f"the offline proposer is not available: {exc}") from None
    seed = cfg.proposer.offline.seed if cfg.proposer.offline.seed is not None else cfg.seed
    cls = offline.OfflineProposer
    try:
        return cls(seed=seed)
    except TypeError:
        return cls(seed)


# ------------------------------------------------------------------------------- lock
class CampaignLock:
    """One process per campaign folder (flock: released by the kernel even on SIGKILL)."""

    def __init__(self, folder: Path):
        self.path = folder / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> CampaignLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise CampaignError(f"campaign {self.path.parent} is running in another process"
                                ) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


# ------------------------------------------------------------------------------- the loop
@dataclass
class BaselineState:
    """The tuned baseline and the yardsticks derived from it (stored in the archive's meta)."""

    name: str
    code: str
    params: dict[str, Any]
    caps: dict[str, dict[str, float]]  # split -> instance label -> capacity (req/s)
    reference: dict[str, dict[str, list[float]]]  # split -> label -> goodput per ladder rung

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Campaign:
    """One campaign run (new or resumed). ``run()`` returns an exit status."""

    def __init__(
        self,
        cfg: CampaignConfig,
        *,
        resume: bool = False,
        extend: bool = False,
        proposer: Proposer | None = None,
        simulator: Simulator | None = None,
        stream: TextIO | None = None,
        tty: bool | None = None,
    ):
        """``extend``: the resume command raised the budget, so a finished campaign whose new
        budget leaves room searches on (without it, resuming a finished campaign changes
        nothing)."""
        self.cfg = cfg
        self.resume = resume
        self.extend = extend
        self.final_dir = cfg.campaign_dir  # where the campaign lives once set up
        self.dir = self.final_dir  # where it is now: the staging folder while setting up
        self.setting_up = False
        self._proposer = proposer
        self.proposer_line = ""
        self.simulator = simulator
        self.progress = Progress(stream, tty)
        self.rng = random.Random(cfg.seed)
        self.instances = split_instances(cfg)
        self.archive: Archive | None = None
        self.evaluator: Evaluator | None = None
        self.baseline: BaselineState | None = None
        self.current = ""  # what the loop is doing, for the status line
        self.proposer_dead = ""  # the reason the proposer can no longer be used
        self._t0 = time.monotonic()
        self._elapsed0 = 0.0
        self._status_cache = ""
        self._status_at = 0.0
        self.sandbox_line: tuple[str, bool] | None = None
        self._reference_files: list[tuple[str, str]] | None = None  # gate.references (name, code)

    # -- time ----------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self._elapsed0 + time.monotonic() - self._t0

    def search_over(self) -> bool:
        b = self.cfg.budget
        if self.elapsed() < b.wall_time_s - max(b.finalize_reserve_s, self.finalize_estimate()):
            return False
        if self.archive is not None and b.min_proposals:
            evaluated = self.archive.count(origin="proposal") - len(self.archive.candidates(
                origin="proposal", status=(A.PENDING, A.TUNING)))
            if evaluated < min(b.min_proposals, b.proposals):
                return False
        return True

    def _gate_sims(self) -> int:
        # baseline capacities (cached after the first gate) and the candidate's (bracketed by
        # the baseline's, so fewer probes); the claim is judged on the capacity search's runs
        return len(self.instances["heldout"]) * (12 + 9)

    def _reference_sims(self) -> int:
        """Simulations the gate's reference policies still need: tuning the ones not tuned
        yet, and their held-out capacities (cached once measured)."""
        if self.archive is None:
            return 0
        if self._reference_files is None:
            self._reference_files = [read_named_policy(n) for n in reference_names(self.cfg)]
        untuned = [name for name, code in self._reference_files
                   if from_campaign(self.archive, name, code) is None]
        per_trial = len(self.cfg.objective.ladder) * len(self.instances["train"])
        return (len(untuned) * self.cfg.budget.trials * per_trial
                + len(self._reference_files) * len(self.instances["heldout"]) * 9)

    def finalize_estimate(self) -> float:
        """Seconds validation and one gate will take, from the measured speed so far."""
        if self.evaluator is None:
            return 0.0
        n_val = len(self.instances["validation"])
        rungs = len(self.cfg.objective.ladder)
        sims = rungs * n_val * (1 + self.cfg.search.finalists) + self._gate_sims() \
            + self._reference_sims()
        return 1.15 * sims * self.evaluator.wall_per_sim()

    def _save_elapsed(self) -> None:
        if self.archive is not None:
            self.archive.set_meta("elapsed_s", self.elapsed())

    # -- top level -----------------------------------------------------------------------
    def run(self) -> int:
        """Run (or resume) the campaign. Setup problems raise CampaignError before anything is
        kept; any other failure of the loop is turned into one CampaignError line too."""
        if self.resume:
            finished = self._finished()
            if finished:
                self.progress.log(finished)
                return EXIT_OK
        try:
            self._preflight()
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        if not self.resume:
            self._refuse_existing()
            self.dir, self.setting_up = staging_dir(self.final_dir), True
        with CampaignLock(self.dir):
            old_handler = signal.getsignal(signal.SIGTERM)
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, _raise_interrupt)
            try:
                if self.setting_up:
                    self._clear_stale_setup()
                    self._refuse_existing()  # again, now that we hold the setup's lock
                return self._run()
            except KeyboardInterrupt:
                self.progress.clear()
                self.progress.log(
                    "interrupted during setup: nothing was kept; run the same command again"
                    if self.setting_up else
                    f"interrupted: {self.cfg.name} stopped cleanly; continue with "
                    f"`autotuner resume {self._resume_arg()}`")
                return EXIT_INTERRUPTED
            except WorkloadRefused:
                if not self.resume:  # a refused yardstick: a new campaign keeps nothing
                    shutil.rmtree(self.dir, ignore_errors=True)
                raise
            except CampaignError:
                raise
            except Exception as exc:  # noqa: BLE001 - one line for the user, never a traceback
                raise CampaignError(self._failure_line(exc)) from exc
            finally:
                if threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGTERM, old_handler)
                self._close()
                if self.setting_up:  # the setup did not finish: keep nothing of it
                    shutil.rmtree(self.dir, ignore_errors=True)

    def _failure_line(self, exc: BaseException) -> str:
        """What an unexpected failure of the loop tells the user, in one line; the traceback
        goes to the campaign's ``errors.log`` (a failed setup keeps nothing, not even that)."""
        doing = self.current or "setting up"
        text = f"{one_line(doing)}: {type(exc).__name__}: {one_line(exc)}"
        if self.setting_up:
            return f"setup failed ({text}); nothing was kept"
        import traceback

        log = self.dir / "errors.log"
        try:
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {doing}\n")
                traceback.print_exception(exc, file=f)
        except OSError:
            pass
        return (f"{text} (traceback in {log}); continue with "
                f"`autotuner resume {self._resume_arg()}`")

    def _resume_arg(self) -> str:
        default_dir = Path("results") / self.cfg.name
        return self.cfg.name if self.final_dir == default_dir else str(self.final_dir)

    # -- the folder's lifecycle -----------------------------------------------------------
    def _refuse_existing(self) -> None:
        """A new campaign never writes into an existing campaign folder."""
        folder = self.final_dir
        if (folder / "archive.sqlite").exists():
            raise CampaignError(
                f"campaign {self.cfg.name!r} already exists in {folder}; continue it with "
                f"`autotuner resume {self._resume_arg()}` or choose another --name")
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise CampaignError(f"{folder} exists and is not a campaign; choose another --name "
                                "or move it away")

    def _clear_stale_setup(self) -> None:
        """The staging folder of a setup that was killed (its lock is free, we hold it now)."""
        stale = [p for p in self.dir.iterdir() if p.name != ".lock"]
        for path in stale:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        if stale:
            self.progress.log(f"removed the unfinished setup of an earlier run ({self.dir})")

    def _end_setup(self) -> None:
        """Every preflight and the baseline's first evaluation passed: move the staging folder
        into place (one rename) and carry on there. A no-op for a campaign already set up."""
        if not self.setting_up:
            return
        assert self.archive is not None and self.evaluator is not None
        self._save_elapsed()
        self.archive.close()
        self.archive = None
        self._refuse_existing()
        if self.final_dir.is_dir():
            self.final_dir.rmdir()  # empty (checked above)
        os.rename(self.dir, self.final_dir)
        self.dir, self.setting_up = self.final_dir, False
        self.archive = Archive(self.dir / "archive.sqlite")
        self.evaluator.archive = self.archive
        self.storage = open_storage(self.dir / "optuna.journal")
        self.progress.log(f"setup passed: campaign folder {self.dir}")

    def _finished(self) -> str | None:
        """For ``resume``: the message saying a finished campaign is finished (and nothing is
        done or written), or None when there is something to resume. Read without writing."""
        db = self.dir / "archive.sqlite"
        if not db.is_file():
            return None
        # No -wal file: nobody has the archive open, so it can be read as immutable (creates
        # no -wal/-shm files); otherwise a read-only connection beside the writer.
        wal = db.with_name(db.name + "-wal").exists()
        uri = f"file:{db}?mode=ro" if wal else f"file:{db}?immutable=1"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=30.0)
            try:
                meta = {k: json.loads(v) for k, v in conn.execute(
                    "SELECT key, value FROM meta WHERE key IN "
                    "('phase', 'elapsed_s', 'promoted')")}
                made = int(conn.execute("SELECT COUNT(*) FROM candidates WHERE "
                                        "origin='proposal'").fetchone()[0])
            finally:
                conn.close()
        except (sqlite3.Error, ValueError):
            return None  # the normal path says what is wrong with it
        if meta.get("phase") != "done":
            return None
        b = self.cfg.budget
        elapsed = float(meta.get("elapsed_s") or 0.0)
        room = made < b.proposals and elapsed < b.wall_time_s - b.finalize_reserve_s
        if self.extend and room:
            return None
        arg = self._resume_arg()
        line = (f"campaign {self.cfg.name} is finished ({made} proposals, "
                f"{_fmt_duration(elapsed)} spent, promoted: {meta.get('promoted') or 'none'}); "
                f"nothing to resume and nothing was changed. `autotuner status {arg}` shows its "
                f"candidates")
        if self.extend:
            return line + (f"; the budget given leaves no room ({made} of {b.proposals} "
                           f"proposals, {_fmt_duration(elapsed)} of "
                           f"{_fmt_duration(b.wall_time_s)})")
        return line + "; to search further, resume with a larger --proposals or --wall-time"

    def _close(self) -> None:
        if self.evaluator is not None:
            self.evaluator.close(cancel=True)
            self.evaluator = None
        if self.archive is not None:
            try:
                self._save_elapsed()
            except Exception:  # noqa: BLE001 - closing must not fail the exit path
                pass
            self.archive.close()
            self.archive = None

    def _open(self) -> None:
        config_path = self.dir / "config.toml"
        db_path = self.dir / "archive.sqlite"
        if self.resume and not db_path.exists():
            raise CampaignError(f"no campaign in {self.dir} to resume")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "candidates").mkdir(exist_ok=True)
        write_config(self.cfg, config_path)
        self.archive = Archive(db_path)
        self.archive.set_meta_many({"name": self.cfg.name} if self.resume else {
            "name": self.cfg.name, "created": time.time(), "phase": "baseline"})
        self._elapsed0 = float(self.archive.get_meta("elapsed_s", 0.0))
        self._t0 = time.monotonic()
        repair_journal(self.dir / "optuna.journal")
        self.storage = open_storage(self.dir / "optuna.journal")
        self.evaluator = Evaluator(self.archive, self.cfg.parallelism, self.simulator)
        self.evaluator.start()

    def _preflight(self) -> None:
        """What can fail for the user's setup fails here, before anything is written, so the
        fixed command can be run again under the same name: the policy files (present, readable,
        accepted by the static check), the traces (readable, with requests in every window), the
        sandbox, and last (it may wait on the network) the proposer: a configured LLM endpoint
        answers one test request."""
        if not self.resume:
            self._check_policy_files()
        self._check_traces()
        if self.simulator is None:
            from autotuner.isolation import SandboxUnavailable
            from autotuner.scoring import sandbox_description

            try:
                self.sandbox_line = sandbox_description(self.cfg.sandbox.backend)
            except SandboxUnavailable as exc:
                raise CampaignError(f"sandbox: {exc}") from None
        stored = self._stored_state() if self.resume else {}
        searching = ("baseline", "seeds", "search") + (("done",) if self.extend else ())
        if self._proposer is None and stored.get("phase", "baseline") in searching:
            self._proposer, self.proposer_line = make_proposer(self.cfg, stored.get("spend"))
            from autotuner.proposers.llm import EndpointError, LLMProposer

            if isinstance(self._proposer, LLMProposer):
                try:
                    answered = self._proposer.preflight(LLM_PREFLIGHT_TIMEOUT_S)
                except EndpointError as exc:
                    raise CampaignError(f"LLM endpoint: {one_line(exc)}") from None
                self.proposer_line += f" ({answered})"

    def _check_policy_files(self) -> None:
        """The baseline and the seeds: each present, readable and accepted by the static check
        (they run in the sandbox exactly as proposals do)."""
        from autotuner.check import check_policy

        named = [("objective.baseline", self.cfg.objective.baseline)]
        named += [("search.seeds", seed) for seed in self.cfg.search.seeds]
        for field_name, name in named:
            try:
                path = policy_file(name)
                code = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise CampaignError(f"{field_name}: {name}: {one_line(exc)}") from None
            checked = check_policy(code, path.name)
            if not checked.ok:
                reasons = "; ".join(checked.reasons()) or "the static check refused it"
                raise CampaignError(f"{field_name}: {path} is refused by the static check: "
                                    f"{one_line(reasons)}")

    def _check_traces(self) -> None:
        """Every trace instance builds (readable, valid, requests in its window)."""
        from autotuner.scoring import build_workload

        seen: set[Instance] = set()
        for inst in (i for split in self.instances.values() for i in split if i.trace):
            if inst in seen:
                continue
            seen.add(inst)
            try:
                build_workload(inst)
            except Exception as exc:  # noqa: BLE001 - any fault of a trace is the user's input
                detail = one_line(exc) if isinstance(exc, (ValueError, OSError)) else \
                    f"{type(exc).__name__}: {one_line(exc)}"
                raise CampaignError(f"workloads.traces: {inst.label}: {detail}") from None

    def _stored_state(self) -> dict[str, Any]:
        """The phase and spend a resumed campaign left (read-only; {} when unreadable)."""
        db = self.dir / "archive.sqlite"
        if not db.is_file():
            return {}
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30.0)
            try:
                row = conn.execute("SELECT value FROM meta WHERE key='phase'").fetchone()
                spend = conn.execute(
                    "SELECT COALESCE(SUM(prompt_tokens),0), COALESCE(SUM(completion_tokens),0),"
                    " COALESCE(SUM(cost_usd),0) FROM candidates").fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            return {}
        return {"phase": json.loads(row[0]) if row else "baseline",
                "spend": {"prompt_tokens": int(spend[0]), "completion_tokens": int(spend[1]),
                          "cost_usd": float(spend[2])}}

    def _run(self) -> int:
        self._open()
        assert self.archive is not None
        cfg = self.cfg
        phase = self.archive.get_meta("phase", "baseline")
        done_props = self.archive.count(origin="proposal")
        if phase == "done" and self.extend and done_props < cfg.budget.proposals:
            phase = "search"  # resumed with a larger budget
            self.archive.set_meta("phase", phase)
        if self.resume:
            self.progress.log(f"resuming campaign {cfg.name} in {self.dir} at phase {phase} "
                              f"({done_props} proposals so far, "
                              f"{_fmt_duration(self._elapsed0)} spent)")
        else:
            self.progress.log(f"campaign {cfg.name}: results in {self.final_dir} (set up in "
                              f"{self.dir} until the baseline's first evaluation passes)")
        if phase == "done":
            self.progress.log("the campaign is complete; `autotuner status "
                              f"{self._resume_arg()}` shows its candidates")
            return EXIT_OK
        self._describe_setup()
        self._setup_proposer()
        if phase == "baseline":
            self._baseline_phase()
            phase = self._advance("seeds")
        else:
            self.baseline = BaselineState(**self.archive.get_meta("baseline"))
        if phase == "seeds":
            self._seeds_phase()
            phase = self._advance("search")
        if phase == "search":
            self._search_phase()
            phase = self._advance("finalize")
        if phase == "finalize":
            self._finalize_phase()
            self._advance("done")
        self._summary()
        return EXIT_OK

    def _advance(self, phase: str) -> str:
        assert self.archive is not None
        self.archive.set_meta_many({"phase": phase, "elapsed_s": self.elapsed()})
        return phase

    def _describe_setup(self) -> None:
        cfg = self.cfg
        c = cfg.cluster
        n = {k: len(v) for k, v in self.instances.items()}
        self.progress.log(
            f"cluster: {c.replicas} x {c.model} on {c.gpu} (tp={c.tp}); SLO: TTFT <= "
            f"{cfg.slo.ttft_s:g} s, TPOT <= {cfg.slo.tpot_s:g} s for {cfg.slo.share:.0%} of "
            f"requests")
        self.progress.log(
            f"workloads: {', '.join(cfg.workloads.scenarios)}"
            + (f" + {len(cfg.workloads.traces)} trace(s)" if cfg.workloads.traces else "")
            + "; requests per instance (held-out): " + ", ".join(
                f"{s} {cfg.workloads.requests_for(s)} ({cfg.workloads.requests_for(s, 'heldout')})"
                for s in cfg.workloads.scenarios)
            + f"; instances train {n['train']}, "
            f"validation {n['validation']}, held-out {n['heldout']}")
        b = cfg.budget
        self.progress.log(
            f"budget: {b.proposals} proposals, {b.trials} Optuna trials per candidate, "
            f"{_fmt_duration(b.wall_time_s)} wall time"
            + (f", {b.tokens} tokens" if b.tokens is not None else "")
            + (f", ${b.usd:g}" if b.usd is not None else "")
            + f"; parallelism {cfg.parallelism}")
        if self.sandbox_line is not None:
            line, weaker = self.sandbox_line
            self.progress.log(f"sandbox: {line}" + (
                "  [WEAKER isolation: a plain child process]" if weaker else ""))
        else:
            self.progress.log("sandbox: none (a test simulator runs trusted files in process)")

    def _setup_proposer(self) -> None:
        assert self.archive is not None
        if self.proposer_line:
            pass  # made by the preflight
        elif self._proposer is None:
            self._proposer, self.proposer_line = make_proposer(self.cfg, self.archive.spend())
        else:
            self.proposer_line = f"{getattr(self._proposer, 'name', 'custom')} proposer"
            from autotuner.proposers.llm import LLMProposer

            if isinstance(self._proposer, LLMProposer):
                self.proposer_line = (f"LLM proposer: model {self._proposer.model} at "
                                      f"{self._proposer.endpoint}")
        self.progress.log(f"proposer: {self.proposer_line}")

    # -- status ---------------------------------------------------------------------------
    def _status_text(self) -> str:
        """The live line; the archive-derived part is refreshed at most every 2 s (it is asked
        for after every finished simulation)."""
        now = time.monotonic()
        if now - self._status_at > 2.0 or not self._status_cache:
            self._status_cache = self._status_query()
            self._status_at = now
        text = f"[{_fmt_duration(self.elapsed())}] {self._status_cache}"
        if self.current:
            text += f" | {self.current}"
        return text

    def _status_query(self) -> str:
        assert self.archive is not None
        props = self.archive.count(origin="proposal")
        best = self._best(promotable_only=True)
        fails = self.archive.failures_by_reason()
        spend = self.archive.spend()
        fail_text = ", ".join(f"{k} {v}" for k, v in sorted(fails.items())) or "none"
        text = (f"proposals {props}/{self.cfg.budget.proposals}"
                f" | best {_fmt_gain(best.train_score if best else None)}"
                + (f" ({best.id})" if best else "")
                + f" | failures: {fail_text}")
        if spend["tokens"] or spend["cost_usd"]:
            text += f" | spend {spend['tokens']:,} tok ${spend['cost_usd']:.2f}"
        return text

    def _tick(self, current: str | None = None) -> None:
        if current is not None:
            self.current = current
        self.progress.status(self._status_text())

    # -- scoring helpers -------------------------------------------------------------------
    def _ladder(self, code: str, params: Mapping[str, Any], split: str,
                caps: Mapping[str, float], candidate_id: str, name: str,
                instances: Sequence[Instance] | None = None) -> list[dict[str, Any]]:
        assert self.evaluator is not None
        insts = list(instances if instances is not None else self.instances[split])
        jobs = ladder_jobs(code, params, insts, caps, self.cfg, name=name)
        total = len(jobs)
        done = [0]

        def on_result(i: int, result: dict[str, Any]) -> None:
            done[0] += 1
            self.progress.status(self._status_text() + f" [{done[0]}/{total}]")

        return self.evaluator.evaluate(jobs, candidate_id, on_result)

    def _reference(self, results: Sequence[Mapping[str, Any]], split: str
                   ) -> dict[str, list[float]]:
        return ladder_goodput(results, self.instances[split], self.cfg)

    # -- phase 1: the tuned baseline -------------------------------------------------------
    def _baseline_phase(self) -> None:
        """Tune the baseline, then measure it on every split: a workload where the tuned
        baseline has (nearly) no capacity is refused now, before anything is searched, since no
        capacity ratio to it means anything."""
        assert self.archive is not None and self.evaluator is not None
        cfg = self.cfg
        name = cfg.objective.baseline
        path = policy_file(name)
        code = path.read_text(encoding="utf-8")
        cand = self.archive.find("baseline")
        if cand is None:
            cand = self.archive.add_candidate(
                candidate_id="baseline", origin="baseline", code=code, status=A.TUNING,
                proposer=f"baseline file {path.name}", files_dir=self.dir / "candidates")
        elif cand.code != code:
            raise CampaignError("the baseline file changed since this campaign started")

        def on_result(i: int, result: dict[str, Any]) -> None:
            self.progress.status(self._status_text())

        try:
            # The defaults' capacity is the first real evaluation: the setup ends once it
            # passed (the folder moves into place, the storages reopen there); tuning then
            # finds these capacities in the evaluation cache.
            defaults = read_policy_source(code, path.name).defaults()
            self._tick(f"baseline: capacity at default parameters {defaults}")
            capacities(self.evaluator, cfg, PolicyRef(path.name, code, defaults),
                       self.instances["train"], "baseline",
                       who="baseline (at its default parameters)")
            self._end_setup()
            tuned = tune_baseline(self.evaluator, cfg, path.name, code, self.instances["train"],
                                  self.storage, tick=self._tick, on_result=on_result)
            self._tick("baseline: capacity on the validation and held-out workloads")
            other = {split: capacities(self.evaluator, cfg, tuned.policy.ref(),
                                       self.instances[split], "baseline", who="tuned baseline")
                     for split in ("validation", "heldout")}
        except YardstickError as exc:
            raise WorkloadRefused(str(exc)) from None
        params, caps, caps0, ref = dict(tuned.policy.params), tuned.caps, tuned.caps_default, \
            tuned.goodput
        self.baseline = BaselineState(path.name, code, params, {"train": caps, **other},
                                      {"train": ref})
        self.archive.set_scores("baseline", "train", {
            label: (0.0, {"capacity": caps[label], "capacity_default_params": caps0[label],
                          "goodput": ref[label]}) for label in caps})
        self.archive.update("baseline", params=params, status=A.TUNED, train_score=0.0,
                            screen_score=0.0)
        self.archive.set_meta("baseline", self.baseline.to_dict())
        gain = [caps[k] / caps0[k] - 1 for k in caps]
        self.progress.log(
            f"baseline {path.name} tuned: {params} (tuning moved training capacity "
            f"{_fmt_gain(sum(gain) / len(gain))}); capacity "
            + ", ".join(f"{k} {v:.3g}" for k, v in caps.items()) + " req/s")

    # -- phase 2: seeds (reference policies starting islands) ------------------------------
    def _seeds_phase(self) -> None:
        assert self.archive is not None
        for k, name in enumerate(self.cfg.search.seeds):
            cid = f"seed-{Path(name).stem}"
            if self.archive.find(cid) is None:
                path = policy_file(name)
                code = path.read_text(encoding="utf-8")
                island = (k + 1) % self.cfg.search.islands
                self.archive.add_candidate(
                    candidate_id=cid, origin="seed", code=code, status=A.PENDING,
                    parent_id="baseline", island=island, proposer=f"reference {path.name}",
                    files_dir=self.dir / "candidates")
        for cand in self.archive.candidates(origin="seed", status=(A.PENDING, A.TUNING)):
            self._process(cand)

    # -- the pipeline for one candidate -----------------------------------------------------
    def _tunables(self, cand: Candidate) -> tuple[Tunable, ...]:
        return read_policy_source(cand.code or "", f"{cand.id}.py").tunables

    def _start_params(self, cand: Candidate, tunables: Sequence[Tunable]) -> dict[str, Any]:
        from autotuner.tune import starting_points

        parent = self.archive.find(cand.parent_id) if cand.parent_id and self.archive else None
        return starting_points(tunables, parent.params if parent else None)[0]

    def _process(self, cand: Candidate) -> None:
        """Screen, then tune, one candidate; each step's outcome is archived before the next."""
        assert self.archive is not None and self.baseline is not None
        cfg = self.cfg
        t0 = time.perf_counter()
        try:
            tunables = self._tunables(cand)
        except PolicyFileError as exc:
            self.archive.update(cand.id, status=A.FAILED, failure=str(exc))
            return
        caps = self.baseline.caps["train"]
        ref = self.baseline.reference["train"]
        name = f"{cand.id}.py"
        code = cand.code or ""
        if cand.status == A.PENDING:
            params0 = self._start_params(cand, tunables)
            self._tick(f"screening {cand.id}")
            screen = self.instances["screen"]
            res = self._ladder(code, params0, "screen", caps, cand.id, name, screen)
            score = ladder_scores(res, screen, ref, cfg)
            if score.error:
                cand = self.archive.update(cand.id, status=A.FAILED, failure=score.error,
                                           eval_seconds=time.perf_counter() - t0)
                self._event(cand, f"failed: {score.error}")
                return
            self.archive.set_scores(cand.id, "screen", {
                k: (v, score.detail[k]) for k, v in score.per_instance.items()})
            if score.objective < cfg.search.screen_threshold:
                cand = self.archive.update(
                    cand.id, status=A.SCREENED_OUT, screen_score=score.objective,
                    failure=f"screen score {score.objective:+.1%} below threshold "
                            f"{cfg.search.screen_threshold:+.1%}",
                    eval_seconds=time.perf_counter() - t0)
                self._event(cand, f"screened out ({_fmt_gain(score.objective)} on "
                                  f"{', '.join(i.label for i in screen)})")
                return
            cand = self.archive.update(cand.id, status=A.TUNING, screen_score=score.objective)
        if cand.status != A.TUNING:
            return
        parent = self.archive.find(cand.parent_id) if cand.parent_id else None

        def objective(params: dict[str, Any]) -> tuple[float | None, str | None]:
            res = self._ladder(code, params, "train", caps, cand.id, name)
            score = ladder_scores(res, self.instances["train"], ref, cfg)
            return (None, score.error) if score.error else (score.objective, None)

        trials = cfg.budget.trials
        self._tick(f"tuning {cand.id}")
        best: list[float] = []

        def on_trial(n: int, value: float | None, error: str | None) -> None:
            if value is not None:
                best[:] = [max(best + [value])]
            self._tick(f"tuning {cand.id}: trial {n}/{trials if tunables else 1}"
                       + (f", best {_fmt_gain(best[0])}" if best else ""))

        result = tune(
            storage=self.storage, study_name=cand.id, tunables=tunables, n_trials=trials,
            objective=objective, seed=cfg.seed, start=[parent.params if parent else None],
            on_trial=on_trial,
            should_stop=self.search_over if cand.origin == "proposal" else None,
        )
        seconds = cand.eval_seconds + time.perf_counter() - t0
        if result.value is None:
            reason = result.failures[0] if result.failures else "no trial finished"
            cand = self.archive.update(cand.id, status=A.FAILED, failure=reason,
                                       eval_seconds=seconds)
            self._event(cand, f"failed: {reason}")
            return
        res = self._ladder(code, result.params, "train", caps, cand.id, name)
        score = ladder_scores(res, self.instances["train"], ref, cfg)
        self.archive.set_scores(cand.id, "train", {
            k: (v, score.detail[k]) for k, v in score.per_instance.items()})
        cand = self.archive.update(cand.id, status=A.TUNED, params=result.params,
                                   train_score=result.value, eval_seconds=seconds,
                                   failure="; ".join(result.failures[:3]))
        self._event(cand, f"tuned: {_fmt_gain(result.value)} on training "
                          f"({result.trials} trials, {seconds:.0f} s) {result.params}")
        self._save_elapsed()

    def _event(self, cand: Candidate, text: str) -> None:
        parent = f" <- {cand.parent_id}" if cand.parent_id else ""
        self.progress.log(f"[{_fmt_duration(self.elapsed())}] {cand.id}{parent} "
                          f"(island {cand.island}): {text}")

    # -- phase 3: search ------------------------------------------------------------------
    def _scored(self, island: int | None = None) -> list[Candidate]:
        assert self.archive is not None
        return [c for c in self.archive.candidates(
            status=(A.TUNED, A.FINALIST, A.GATE_FAILED, A.PROMOTED), island=island)
            if c.train_score is not None]

    def _best(self, promotable_only: bool = False) -> Candidate | None:
        pool = [c for c in self._scored() if c.promotable or not promotable_only]
        return max(pool, key=lambda c: (c.train_score, -c.seq)) if pool else None

    def _island_members(self, island: int) -> list[Candidate]:
        assert self.archive is not None
        members = self._scored(island)
        migrants = self.archive.get_meta("migrants", {}).get(str(island), [])
        for cid in migrants:
            c = self.archive.find(cid)
            if c is not None and c.train_score is not None and c not in members:
                members.append(c)
        if not members:
            members = [self.archive.get("baseline")]
        return members

    def _migrate(self) -> None:
        assert self.archive is not None
        n = self.cfg.search.islands
        if n < 2:
            return
        migrants = self.archive.get_meta("migrants", {})
        for i in range(n):
            members = self._scored(i)
            if not members:
                continue
            best = max(members, key=lambda c: c.train_score)
            dest = migrants.setdefault(str((i + 1) % n), [])
            if best.id not in dest:
                dest.append(best.id)
        self.archive.set_meta("migrants", migrants)

    def _parent_for(self, island: int) -> Candidate:
        members = self._island_members(island)
        k = min(self.cfg.search.tournament, len(members))
        drawn = self.rng.sample(members, k)
        return max(drawn, key=lambda c: (c.train_score or 0.0, -c.seq))

    def _info(self, cand: Candidate, failures: Sequence[str] = ()) -> ParentInfo:
        assert self.archive is not None
        train = None if cand.train_score is None else round(cand.train_score, 4)
        gains = {label: round(score, 4) for label, (score, _)
                 in self.archive.scores(cand.id, "train").get("train", {}).items()
                 if score is not None}
        return ParentInfo(cand.id, cand.code or "", train, gains, tuple(failures),
                          dict(cand.params))

    def _request(self, island: int) -> tuple[ProposalRequest, Candidate]:
        assert self.archive is not None and self.baseline is not None
        cfg = self.cfg
        parent = self._parent_for(island)
        children = [c for c in self.archive.candidates()
                    if c.parent_id == parent.id and c.failure
                    and c.status in (A.FAILED, A.SCREENED_OUT, A.PROPOSAL_FAILED)]
        failures = [f"{c.id}: {c.failure}" for c in children[-3:]]
        if parent.failure and parent.status == A.TUNED:
            failures.insert(0, f"some tuning trials of {parent.id} failed: {parent.failure}")
        others = sorted((c for c in self._scored() if c.id != parent.id),
                        key=lambda c: (c.island == island, -(c.train_score or 0.0)))
        inspirations = tuple(self._info(c) for c in others[: cfg.search.inspirations])
        o, c = cfg.objective, cfg.cluster
        objective = Objective(dataclasses.asdict(cfg.slo), cfg.slo.share, tuple(o.ladder),
                              o.goodput, cfg.gate.margin, self.baseline.name)
        workloads = tuple(WorkloadInfo(label, cap)
                          for label, cap in self.baseline.caps["train"].items())
        cluster = ClusterInfo(c.replicas, c.model, c.gpu, c.tp, c.max_batch_tokens)
        return ProposalRequest(self._info(parent, failures), inspirations, objective, workloads,
                               cluster, baseline_params=self.baseline.params), parent

    def _check(self, code: str) -> list[str]:
        from autotuner.check import check_policy

        return check_policy(code).reasons()

    def _search_phase(self) -> None:
        assert self.archive is not None
        cfg = self.cfg
        results: queue.Queue[tuple[int, str, Proposal | BaseException]] = queue.Queue()
        in_flight: dict[int, tuple[str, int]] = {}  # ticket -> (parent id, island)
        ticket = 0
        abandon_at: float | None = None
        # candidates left half-done by a previous run go first
        for cand in self.archive.candidates(origin="proposal", status=(A.PENDING, A.TUNING)):
            self._process(cand)
        proposer = self._proposer
        assert proposer is not None

        def submit(island: int) -> None:
            nonlocal ticket
            request, parent = self._request(island)
            ticket += 1
            in_flight[ticket] = (parent.id, island)
            my_ticket = ticket

            def work() -> None:
                try:
                    results.put((my_ticket, parent.id, proposer.propose(request, self._check)))
                except BaseException as exc:  # noqa: BLE001 - reported on the main thread
                    results.put((my_ticket, parent.id, exc))

            threading.Thread(target=work, name=f"proposal-{ticket}", daemon=True).start()

        while True:
            made = self.archive.count(origin="proposal")
            pending = self.archive.candidates(origin="proposal", status=(A.PENDING, A.TUNING))
            spend = self.archive.spend()
            out_of_money = ((cfg.budget.tokens is not None and spend["tokens"] >= cfg.budget.tokens)
                            or (cfg.budget.usd is not None and spend["cost_usd"] >= cfg.budget.usd))
            stop_asking = (self.search_over() or bool(self.proposer_dead) or out_of_money)
            while (not stop_asking and made + len(in_flight) < cfg.budget.proposals
                   and len(in_flight) + len(pending) < cfg.search.in_flight):
                island = (made + len(in_flight)) % cfg.search.islands
                submit(island)
            if pending and not self.search_over():
                self._process(pending[0])
                self._collect(results, in_flight, wait_s=0.0)
                continue
            if in_flight and self.search_over():
                # proposals still out when time is up get a grace period, then are abandoned
                if abandon_at is None:
                    abandon_at = time.monotonic() + ABANDON_GRACE_S
                elif time.monotonic() >= abandon_at:
                    self._abandon(in_flight)
            if not in_flight:
                if self.search_over() and made < cfg.budget.proposals:
                    self.progress.log(f"search stopped: wall-time budget reached "
                                      f"({made} of {cfg.budget.proposals} proposals)")
                elif out_of_money:
                    self.progress.log("search stopped: the token/dollar budget is spent")
                elif self.proposer_dead:
                    self.progress.log(f"search stopped: {self.proposer_dead}")
                break
            status = getattr(proposer, "status", lambda: "")() or "waiting for the proposer"
            self._tick(status if not pending else "")
            self._collect(results, in_flight, wait_s=1.0)

    def _collect(self, results: queue.Queue, in_flight: dict[int, tuple[str, int]],
                 wait_s: float) -> None:
        """Archive finished proposals (main thread only): wait up to ``wait_s`` for the first,
        then take whatever else is ready."""
        assert self.archive is not None
        timeout: float | None = wait_s
        while in_flight:
            try:
                if timeout:
                    item = results.get(timeout=timeout)
                else:
                    item = results.get_nowait()
            except queue.Empty:
                return
            timeout = None
            ticket, parent_id, outcome = item
            if ticket not in in_flight:
                continue  # abandoned earlier
            _, island = in_flight.pop(ticket)
            self._archive_proposal(outcome, parent_id, island)
            made = self.archive.count(origin="proposal")
            if made % self.cfg.search.migration_every == 0:
                self._migrate()

    def _abandon(self, in_flight: dict[int, tuple[str, int]]) -> None:
        """Record proposals that never came back; what they cost so far is charged to them
        (the proposer's own running totals minus what the archive already holds)."""
        assert self.archive is not None
        spent = getattr(self._proposer, "spent", None)
        recorded = self.archive.spend()
        extra = {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
        if spent is not None:
            extra = {"prompt_tokens": max(0, spent.prompt_tokens - recorded["prompt_tokens"]),
                     "completion_tokens": max(0, spent.completion_tokens
                                              - recorded["completion_tokens"]),
                     "cost_usd": max(0.0, spent.cost_usd - recorded["cost_usd"])}
        for ticket, (parent_id, island) in list(in_flight.items()):
            cand = self.archive.add_candidate(
                origin="proposal", code=None, status=A.PROPOSAL_FAILED, parent_id=parent_id,
                island=island, proposer=getattr(self._proposer, "name", "proposer"),
                failure="abandoned: the search ended before the proposer answered", **extra)
            extra = {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
            self._event(cand, cand.failure)
            del in_flight[ticket]

    def _archive_proposal(self, outcome: Proposal | BaseException, parent_id: str,
                          island: int) -> None:
        assert self.archive is not None
        name = getattr(self._proposer, "name", "proposer")
        if isinstance(outcome, BaseException):
            proposal = Proposal(None, False, f"proposer crashed: {type(outcome).__name__}: "
                                             f"{outcome}")
        else:
            proposal = outcome
        common = dict(origin="proposal", parent_id=parent_id, island=island, proposer=name,
                      prompt_tokens=proposal.prompt_tokens,
                      completion_tokens=proposal.completion_tokens, cost_usd=proposal.cost_usd,
                      attempts=proposal.attempts, model=proposal.model,
                      raw=proposal.raw_replies, files_dir=self.dir / "candidates")
        code, reason = proposal.code, proposal.reason
        if proposal.ok and code is not None:
            reasons = self._check(code)  # the proposer checked too; the archive trusts only us
            if reasons:
                reason = "check rejected: " + "; ".join(reasons)
            else:
                same = self.archive.same_program(code)
                if same is not None:
                    reason = f"duplicate of {same} (the same program)"
        if proposal.ok and code is not None and not reason:
            cand = self.archive.add_candidate(code=code, status=A.PENDING, **common)
            self._event(cand, "proposed" + (f" ({proposal.attempts} attempts)"
                                            if proposal.attempts > 1 else ""))
            return
        cand = self.archive.add_candidate(code=code, status=A.PROPOSAL_FAILED,
                                          failure=reason or "no usable proposal", **common)
        self._event(cand, f"proposal failed: {brief(cand.failure)}")  # `show` has it whole
        if proposal.fatal and not self.proposer_dead:
            self.proposer_dead = f"the proposer cannot go on: {proposal.reason}"

    # -- phase 4: validation and the gate ---------------------------------------------------
    def _finalize_phase(self) -> None:
        assert self.archive is not None and self.baseline is not None
        cfg = self.cfg
        b = self.baseline
        base_ref = PolicyRef(b.name, b.code, b.params)
        if "validation" not in b.reference:
            self._tick("validation: baseline ladder")
            caps = b.caps.get("validation")
            if caps is None:  # a campaign started before the baseline was measured on it
                try:
                    caps = capacities(self.evaluator, cfg, base_ref,
                                      self.instances["validation"], "baseline",
                                      who="tuned baseline")
                except YardstickError as exc:
                    raise CampaignError(str(exc)) from None
            ref = self._reference(self._ladder(b.code, b.params, "validation", caps, "baseline",
                                               b.name), "validation")
            b.caps["validation"], b.reference["validation"] = caps, ref
            self.archive.set_meta("baseline", b.to_dict())
        tuned = [c for c in self._scored() if c.promotable and c.status in (A.TUNED,
                                                                             A.FINALIST)]
        tuned = [c for c in tuned if (c.train_score or 0) > 0]
        tuned.sort(key=lambda c: -(c.train_score or 0.0))
        finalists = tuned[: cfg.search.finalists]
        if not finalists:
            self.progress.log("no candidate beat the tuned baseline on training: nothing to gate")
            return
        for cand in finalists:
            if cand.validation_score is None:
                self._tick(f"validating {cand.id}")
                res = self._ladder(cand.code or "", cand.params, "validation",
                                   b.caps["validation"], cand.id, f"{cand.id}.py")
                score = ladder_scores(res, self.instances["validation"],
                                      b.reference["validation"], cfg)
                value = -1.0 if score.error else score.objective
                self.archive.set_scores(cand.id, "validation", {
                    k: (v, score.detail[k]) for k, v in score.per_instance.items()})
                self.archive.update(cand.id, status=A.FINALIST, validation_score=value,
                                    failure=score.error or "")
                self.progress.log(f"finalist {cand.id}: training {_fmt_gain(cand.train_score)},"
                                  f" validation {_fmt_gain(value)}")
        finalists = sorted((self.archive.get(c.id) for c in finalists),
                           key=lambda c: -(c.validation_score or -1.0))
        gated = 0
        references: list[PolicyRef] | None = None
        for cand in finalists:
            if cand.status != A.FINALIST:
                continue
            if (cand.validation_score or -1.0) <= 0:
                self.archive.update(cand.id, status=A.GATE_FAILED,
                                    failure="no gain over the tuned baseline on validation")
                continue
            promoted_id = self.archive.get_meta("promoted")
            promoted = self.archive.find(promoted_id) if promoted_id else None
            # The best finalist is always gated. Others only while time is left, and only if
            # validation says they might beat the promoted policy (they must, by the margin).
            gate_s = 1.15 * self._gate_sims() * self.evaluator.wall_per_sim() \
                if self.evaluator else 0.0
            skip = ""
            if gated and self.elapsed() + gate_s > cfg.budget.wall_time_s:
                skip = "not gated: the wall-time budget is spent"
            elif promoted is not None and (cand.validation_score or 0.0) <= (
                    promoted.validation_score or 0.0):
                skip = (f"not gated: validation {_fmt_gain(cand.validation_score)} is not above "
                        f"the promoted {promoted.id}'s {_fmt_gain(promoted.validation_score)}")
            if skip:
                self.archive.update(cand.id, failure=skip)
                self.progress.log(f"finalist {cand.id} {skip}")
                continue
            gated += 1
            if references is None:
                references = self._tuned_references()
            self._tick(f"gate: {cand.id} on {len(self.instances['heldout'])} held-out instances")
            try:
                result = run_gate(
                    self.evaluator, cfg, cand.id,
                    PolicyRef(f"{cand.id}.py", cand.code or "", cand.params), base_ref,
                    self.instances["heldout"],
                    PolicyRef(f"{promoted.id}.py", promoted.code or "", promoted.params)
                    if promoted else None, promoted.id if promoted else None, references)
            except GateInputError as exc:
                self.progress.log(f"the gate cannot judge on these workloads: {exc}")
                return
            comp = result.baseline
            if result.passed:
                best_ref = next((r for r in references or []
                                 if Path(r.name).stem == result.reference), None)
                policy_path, record_path = write_promotion(
                    self.dir, cfg, cand.id, PolicyRef(f"{cand.id}.py", cand.code or "",
                                                      cand.params),
                    base_ref, b.name, result, promoted_id, best_ref)
                self.archive.update(cand.id, status=A.PROMOTED, gate=result.to_dict())
                promotions = self.archive.get_meta("promotions", [])
                self.archive.set_meta_many({"promoted": cand.id,
                                            "promotions": [*promotions, cand.id]})
                self.progress.log(
                    f"PROMOTED {cand.id}: held-out capacity {comp.mean_gain:+.1%} over the tuned "
                    f"baseline ({cfg.gate.confidence:.0%} lower bound {comp.lower_bound:+.1%}, "
                    f"margin {cfg.gate.margin:.0%}); policy {policy_path}; record {record_path}")
            else:
                self.archive.update(cand.id, status=A.GATE_FAILED, gate=result.to_dict(),
                                    failure="gate: " + "; ".join(result.reasons))
                self.progress.log(f"gate refused {cand.id} ({', '.join(result.failed())}):")
            for condition in result.conditions:
                self.progress.log(f"  {condition.line()}")

    def _tuned_references(self) -> list[PolicyRef]:
        """The gate's reference policies, tuned like the baseline: a seed the campaign tuned
        keeps its tuned values; any other is tuned here once (kept in the archive's meta)."""
        assert self.archive is not None and self.baseline is not None
        assert self.evaluator is not None
        b, archive = self.baseline, self.archive

        def keep(tuned: TunedPolicy) -> None:
            stored = dict(archive.get_meta("references", {}) or {})
            archive.set_meta("references", stored | {tuned.stem: dataclasses.asdict(tuned)})
            self.progress.log(f"reference {tuned.stem} tuned like the baseline: "
                              f"{dict(tuned.params)} (training {_fmt_gain(tuned.value)})")

        refs = tuned_references(
            self.evaluator, self.cfg, self.instances["train"],
            TunedPolicy(b.name, b.code, b.params, 0.0, "campaign"), b.caps["train"],
            b.reference["train"], self.storage, "this campaign", archive=archive,
            log=self._tick, on_tuned=keep)
        return [r.ref() for r in refs]

    def _summary(self) -> None:
        assert self.archive is not None
        self.progress.clear()
        props = self.archive.count(origin="proposal")
        best = self._best(promotable_only=True)
        promoted = self.archive.get_meta("promoted")
        fails = self.archive.failures_by_reason()
        spend = self.archive.spend()
        lines = [
            f"campaign {self.cfg.name} finished in {_fmt_duration(self.elapsed())}: "
            f"{props} proposals; this session ran {self.evaluator.ran if self.evaluator else 0} "
            f"evaluations ({self.evaluator.sims if self.evaluator else 0} simulations) and took "
            f"{self.evaluator.cached if self.evaluator else 0} from the archive's cache",
            f"  proposer: {self.proposer_line}",
            f"  best on training: {best.id} {_fmt_gain(best.train_score)}" if best else
            "  best on training: none",
            "  failures: " + (", ".join(f"{k} {v}" for k, v in sorted(fails.items())) or "none"),
        ]
        if spend["tokens"] or spend["cost_usd"]:
            lines.append(f"  spend: {spend['tokens']:,} tokens, ${spend['cost_usd']:.4f}")
        if promoted:
            cand = self.archive.get(promoted)
            comp = (cand.gate or {}).get("comparisons", [{}])[0]
            lines.append(
                f"  promoted: {promoted} (held-out capacity {_fmt_gain(comp.get('mean_gain'))},"
                f" lower bound {_fmt_gain(comp.get('lower_bound'))}); "
                f"see {self.dir / 'promotions'}")
        else:
            lines.append("  promoted: none")
        lines.append(f"  review: autotuner status {self._resume_arg()}")
        for line in lines:
            self.progress.log(line)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# ------------------------------------------------------------------------------- CLI
def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``autotuner run``: a campaign file plus overrides of its common fields."""
    p.add_argument("--config", metavar="FILE", help="campaign file (TOML); built-in defaults "
                   "for everything it leaves out (see campaign.example.toml)")
    _add_overrides(p)


def _add_overrides(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("overrides (win over the campaign file)")
    g.add_argument("--name", help="campaign name; results go to RESULTS_DIR/NAME")
    g.add_argument("--results-dir", help="where campaign folders live (default results)")
    g.add_argument("--seed", type=int, help="campaign seed")
    g.add_argument("--parallelism", type=int, help="evaluations at once (default 2)")
    g.add_argument("--proposals", type=int, help="proposal budget")
    g.add_argument("--trials", type=int, help="Optuna trials per candidate (and the baseline)")
    g.add_argument("--wall-time", type=float, metavar="SECONDS", help="wall-time budget")
    g.add_argument("--tokens", type=int, help="LLM token budget")
    g.add_argument("--usd", type=float, help="LLM dollar budget")
    g.add_argument("--proposer", choices=["auto", "offline", "llm"], help="who writes proposals")
    g.add_argument("--llm-model", metavar="NAME",
                   help="the proposer's LLM, as its endpoint names it (else $OPENAI_MODEL)")
    g.add_argument("--model", dest="deprecated_model", help=argparse.SUPPRESS)
    g.add_argument("--base-url", help="OpenAI-compatible endpoint URL (else $OPENAI_BASE_URL)")
    g.add_argument("--sandbox", choices=["auto", "bwrap", "docker", "process"],
                   help="isolation backend")
    g.add_argument("--requests", type=int,
                   help="requests per workload instance, for every scenario")
    g.add_argument("--scenarios", help="comma-separated built-in scenarios")


_OVERRIDES = {
    "name": "name", "results_dir": "results_dir", "seed": "seed", "parallelism": "parallelism",
    "proposals": "budget.proposals", "trials": "budget.trials", "wall_time": "budget.wall_time_s",
    "tokens": "budget.tokens", "usd": "budget.usd", "proposer": "proposer.kind",
    "llm_model": "proposer.llm.model", "base_url": "proposer.llm.base_url",
    "sandbox": "sandbox.backend", "requests": "workloads.requests",
}


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out = {dotted: getattr(args, attr, None) for attr, dotted in _OVERRIDES.items()}
    if getattr(args, "deprecated_model", None) is not None:
        print("autotuner run: --model is deprecated here, use --llm-model (in simulate, --model "
              "is the served model)", file=sys.stderr)
        out["proposer.llm.model"] = out["proposer.llm.model"] or args.deprecated_model
    if getattr(args, "requests", None) is not None:
        out["workloads.scenario_requests"] = {}  # one count for every scenario
        out["workloads.heldout_requests"] = {}
    if getattr(args, "scenarios", None):
        out["workloads.scenarios"] = [s.strip() for s in args.scenarios.split(",") if s.strip()]
        out["workloads.screen"] = [s for s in ("mixed",) if s in out["workloads.scenarios"]] or \
            out["workloads.scenarios"][:1]
    return {k: v for k, v in out.items() if v is not None}


def run_run(args: argparse.Namespace) -> int:
    """``autotuner run``: start a new campaign."""
    try:
        cfg = load_config(getattr(args, "config", None), **_overrides(args))
        return Campaign(cfg).run()
    except (ConfigError, CampaignError) as exc:
        print(f"autotuner run: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE


def add_resume_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("campaign", help="campaign name (under results/) or folder")
    g = p.add_argument_group("budget changes (the rest of the config is kept as run)")
    g.add_argument("--proposals", type=int, help="new proposal budget (total, not extra); a "
                   "finished campaign searches on only when given a larger budget")
    g.add_argument("--wall-time", type=float, metavar="SECONDS",
                   help="new wall-time budget (total, counting the time already spent)")
    g.add_argument("--parallelism", type=int, help="evaluations at once")


def campaign_dir(name: str, results_dir: str = "results") -> Path:
    """A campaign given by name (under ``results_dir``) or by folder path."""
    path = Path(name)
    if (path / "config.toml").is_file():
        return path
    candidate = Path(results_dir) / name
    if (candidate / "config.toml").is_file():
        return candidate
    unfinished = [d for d in (staging_dir(path), staging_dir(candidate)) if d.is_dir()]
    raise CampaignError(f"no campaign {name!r} (looked for {candidate}/config.toml"
                        + (f" and {path}/config.toml" if path != candidate else "") + ")"
                        + ("; its setup was interrupted before it finished: run the same "
                           "`autotuner run` command again" if unfinished else ""))


def run_resume(args: argparse.Namespace) -> int:
    """``autotuner resume CAMPAIGN``: continue a stopped or killed campaign."""
    try:
        folder = campaign_dir(args.campaign)
        overrides = {"budget.proposals": getattr(args, "proposals", None),
                     "budget.wall_time_s": getattr(args, "wall_time", None),
                     "parallelism": getattr(args, "parallelism", None),
                     # the folder is where it is, whatever name/results_dir the file says
                     "name": folder.name, "results_dir": str(folder.parent)}
        cfg = load_config(folder / "config.toml", **overrides)
        extend = overrides["budget.proposals"] is not None or \
            overrides["budget.wall_time_s"] is not None
        return Campaign(cfg, resume=True, extend=extend).run()
    except (ConfigError, CampaignError) as exc:
        print(f"autotuner resume: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE


__all__ = [
    "Campaign", "CampaignError", "Progress", "add_resume_arguments", "add_run_arguments",
    "campaign_dir", "make_proposer", "run_resume", "run_run",
]
