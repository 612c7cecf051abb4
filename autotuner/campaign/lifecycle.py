"""A campaign folder's life: one process at a time (the lock), a new campaign set up in a hidden
staging folder and renamed into place once its setup passed, opened and closed around a run,
a finished campaign's resume answered without writing, and an unexpected failure told in one
line (its traceback kept in ``errors.log``).

A failed setup leaves nothing, and the same command can simply be run again; a setup killed
half-way leaves a staging folder that the next run of that name removes.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import sqlite3
import time
import traceback
from pathlib import Path
from typing import Any

from autotuner.archive import Archive
from autotuner.campaign.errors import CampaignError, one_line
from autotuner.campaign.progress import fmt_duration
from autotuner.campaign.state import CampaignState
from autotuner.config import write_config
from autotuner.scoring import Evaluator, Executor
from autotuner.scoring.ray_executor import RayTasks  # imports ray only when one is made
from autotuner.tune import Studies, open_rdb_storage, open_storage, repair_journal


def staging_dir(folder: Path) -> Path:
    """Where a new campaign is set up: a hidden sibling of its folder, renamed into place once
    the setup has passed, so that ``results/<name>/`` never holds a half-made campaign."""
    return folder.parent / f".{folder.name}.setup"


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


# ------------------------------------------------------------------------------ setting up
def refuse_existing(state: CampaignState) -> None:
    """A new campaign never writes into an existing campaign folder."""
    folder = state.final_dir
    if (folder / "archive.sqlite").exists():
        raise CampaignError(
            f"campaign {state.cfg.name!r} already exists in {folder}; continue it with "
            f"`autotuner resume {state.resume_arg()}` or choose another --name")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise CampaignError(f"{folder} exists and is not a campaign; choose another --name "
                            "or move it away")


def clear_stale_setup(state: CampaignState) -> None:
    """The staging folder of a setup that was killed (its lock is free, we hold it now)."""
    stale = [p for p in state.dir.iterdir() if p.name != ".lock"]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if stale:
        state.progress.log(f"removed the unfinished setup of an earlier run ({state.dir})")


def end_setup(state: CampaignState) -> None:
    """Every preflight and the baseline's first evaluation passed: move the staging folder
    into place (one rename) and carry on there. A no-op for a campaign already set up."""
    if not state.setting_up:
        return
    assert state.archive is not None and state.evaluator is not None
    state.save_elapsed()
    state.archive.close()
    state.archive = None
    refuse_existing(state)
    if state.final_dir.is_dir():
        state.final_dir.rmdir()  # empty (checked above)
    os.rename(state.dir, state.final_dir)
    state.dir, state.setting_up = state.final_dir, False
    state.archive = Archive(state.dir / "archive.sqlite")
    state.evaluator.archive = state.archive
    if not state.cfg.optuna_storage:  # the journal moved with the folder
        state.storage = open_studies(state)
    state.progress.log(f"setup passed: campaign folder {state.dir}")


# ------------------------------------------------------------------------------ open / close
def open_folder(state: CampaignState) -> None:
    """Open (or create) the folder's config, archive, Optuna journal and evaluator."""
    config_path = state.dir / "config.toml"
    db_path = state.dir / "archive.sqlite"
    if state.resume and not db_path.exists():
        raise CampaignError(f"no campaign in {state.dir} to resume")
    state.dir.mkdir(parents=True, exist_ok=True)
    (state.dir / "candidates").mkdir(exist_ok=True)
    write_config(state.cfg, config_path)
    state.archive = Archive(db_path)
    state.archive.set_meta_many({"name": state.cfg.name} if state.resume else {
        "name": state.cfg.name, "created": time.time(), "phase": "baseline"})
    state.elapsed0 = float(state.archive.get_meta("elapsed_s", 0.0))
    state.t0 = time.monotonic()
    state.storage = open_studies(state)
    state.evaluator = Evaluator(state.archive, state.cfg.parallelism, state.simulator,
                                executor=make_executor(state))
    state.evaluator.start()


def open_studies(state: CampaignState) -> Studies:
    """The campaign's Optuna studies: the folder's journal (repaired after a kill), or the RDB
    the config names, under a prefix made once for this campaign and kept in its archive."""
    assert state.archive is not None
    url = state.cfg.optuna_storage
    if not url:
        repair_journal(state.dir / "optuna.journal")
        return Studies(open_storage(state.dir / "optuna.journal"))
    prefix = state.archive.get_meta("optuna_prefix")
    if not prefix:
        prefix = f"{state.cfg.name}-{secrets.token_hex(4)}/"
        state.archive.set_meta("optuna_prefix", prefix)
    return Studies(open_rdb_storage(url), str(prefix))


def make_executor(state: CampaignState) -> Executor | None:
    """Ray tasks when the config says so (the preflight connected to the cluster); None: the
    evaluator's local pool. Each node's sandbox goes to the log the first time it reports."""
    if state.cfg.executor != "ray":
        return None
    return RayTasks(sessions=True, simulator=state.simulator,
                    on_node=lambda line: state.progress.log(f"ray node: {line}"))


def close_folder(state: CampaignState) -> None:
    if state.evaluator is not None:
        state.evaluator.close(cancel=True)
        state.evaluator = None
    if state.archive is not None:
        try:
            state.save_elapsed()
        except Exception:  # noqa: BLE001 - closing must not fail the exit path
            pass
        state.archive.close()
        state.archive = None


def failure_line(state: CampaignState, exc: BaseException) -> str:
    """What an unexpected failure of the loop tells the user, in one line; the traceback
    goes to the campaign's ``errors.log`` (a failed setup keeps nothing, not even that)."""
    doing = state.current or "setting up"
    text = f"{one_line(doing)}: {type(exc).__name__}: {one_line(exc)}"
    if state.setting_up:
        return f"setup failed ({text}); nothing was kept"
    log = state.dir / "errors.log"
    try:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {doing}\n")
            traceback.print_exception(exc, file=f)
    except OSError:
        pass
    return (f"{text} (traceback in {log}); continue with "
            f"`autotuner resume {state.resume_arg()}`")


# ------------------------------------------------------------------------------ reading it
def _read_only(db: Path) -> sqlite3.Connection:
    """The archive opened without writing. No -wal file: nobody has it open, so it can be read
    as immutable (creates no -wal/-shm files); otherwise a read-only connection beside the
    writer."""
    wal = db.with_name(db.name + "-wal").exists()
    uri = f"file:{db}?mode=ro" if wal else f"file:{db}?immutable=1"
    return sqlite3.connect(uri, uri=True, timeout=30.0)


def finished_message(state: CampaignState) -> str | None:
    """For ``resume``: the message saying a finished campaign is finished (and nothing is
    done or written), or None when there is something to resume. Read without writing."""
    db = state.dir / "archive.sqlite"
    if not db.is_file():
        return None
    try:
        conn = _read_only(db)
        try:
            meta = {k: json.loads(v) for k, v in conn.execute(
                "SELECT key, value FROM meta WHERE key IN ('phase', 'elapsed_s', 'promoted')")}
            made = int(conn.execute("SELECT COUNT(*) FROM candidates WHERE "
                                    "origin='proposal'").fetchone()[0])
        finally:
            conn.close()
    except (sqlite3.Error, ValueError):
        return None  # the normal path says what is wrong with it
    if meta.get("phase") != "done":
        return None
    b = state.cfg.budget
    elapsed = float(meta.get("elapsed_s") or 0.0)
    room = made < b.proposals and elapsed < b.wall_time_s - b.finalize_reserve_s
    if state.extend and room:
        return None
    line = (f"campaign {state.cfg.name} is finished ({made} proposals, "
            f"{fmt_duration(elapsed)} spent, promoted: {meta.get('promoted') or 'none'}); "
            f"nothing to resume and nothing was changed. `autotuner status "
            f"{state.resume_arg()}` shows its candidates")
    if state.extend:
        return line + (f"; the budget given leaves no room ({made} of {b.proposals} "
                       f"proposals, {fmt_duration(elapsed)} of "
                       f"{fmt_duration(b.wall_time_s)})")
    return line + "; to search further, resume with a larger --proposals or --wall-time"


def stored_state(state: CampaignState) -> dict[str, Any]:
    """The phase and spend a resumed campaign left (read-only; {} when unreadable)."""
    db = state.dir / "archive.sqlite"
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
