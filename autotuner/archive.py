"""The campaign archive: every candidate, its lineage and evidence, in one SQLite file.

Durability is the point. The database runs in WAL mode with ``synchronous=FULL`` and every change
is one transaction, so a campaign killed with SIGKILL at any instant leaves either the state
before a change or the state after it, never half of one. Evaluations (one simulation of one
policy with one parameter set on one workload at one rate) are keyed by a hash of exactly those
inputs; a resumed campaign looks each one up before running it, so a finished evaluation is never
run twice.

One connection per ``Archive``, used by one thread at a time (the campaign loop's main thread does
all writing; proposer threads hand their results back to it).
"""

from __future__ import annotations

import difflib
import json
import math
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotuner.identity import (
    canonical,
    evaluation_key,  # noqa: F401 - scoring still imports it from here (predates identity)
    json_safe,
    program_sha,
    sha256,
)

_clean = json_safe  # review's name for it, from before autotuner.identity

SCHEMA_VERSION = 1

# Candidate statuses, in the order a candidate moves through them.
PROPOSAL_FAILED = "proposal_failed"  # the proposer returned no usable file (reason recorded)
PENDING = "pending"  # a checked file, not evaluated yet
SCREENED_OUT = "screened_out"  # did worse than the threshold on the cascade's cheap stage
FAILED = "failed"  # an evaluation failed (illegal decision, crash, timeout)
TUNING = "tuning"  # Optuna study under way
TUNED = "tuned"  # tuned on the training set; has a training score
FINALIST = "finalist"  # validated (re-ranked on validation workloads)
GATE_FAILED = "gate_failed"
PROMOTED = "promoted"
STATUSES = (PROPOSAL_FAILED, PENDING, SCREENED_OUT, FAILED, TUNING, TUNED, FINALIST, GATE_FAILED,
            PROMOTED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS candidates (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    created REAL NOT NULL,
    parent_id TEXT,
    island INTEGER NOT NULL DEFAULT 0,
    origin TEXT NOT NULL,            -- baseline | seed | proposal
    proposer TEXT NOT NULL DEFAULT '',
    code TEXT,                       -- NULL when the proposer produced nothing usable
    code_sha TEXT,
    program_sha TEXT,                -- hash of the parsed program (comments and layout ignored)
    diff TEXT NOT NULL DEFAULT '',   -- unified diff of code against the parent's
    status TEXT NOT NULL,
    failure TEXT NOT NULL DEFAULT '',
    params TEXT NOT NULL DEFAULT '{}',  -- tuned values of its TUNABLES (JSON)
    screen_score REAL,
    train_score REAL,
    validation_score REAL,
    gate TEXT,                       -- gate statistics (JSON) once gated
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    model TEXT NOT NULL DEFAULT '',
    raw TEXT NOT NULL DEFAULT '[]',  -- the proposer's raw replies (JSON list)
    eval_seconds REAL NOT NULL DEFAULT 0,
    updated REAL NOT NULL,
    copy_of TEXT NOT NULL DEFAULT '',  -- the reference policy it is (autotuner.lineage), if any
    explanation TEXT                 -- why it wins, from measured diagnostics (JSON), if gated
);
CREATE INDEX IF NOT EXISTS candidates_status ON candidates(status);
CREATE INDEX IF NOT EXISTS candidates_program ON candidates(program_sha);
CREATE TABLE IF NOT EXISTS scores (
    candidate_id TEXT NOT NULL,
    phase TEXT NOT NULL,             -- screen | train | validation | heldout
    workload TEXT NOT NULL,          -- instance label, e.g. "chat@1"
    score REAL,                      -- relative to the tuned baseline (0.0 = equal)
    detail TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (candidate_id, phase, workload)
);
CREATE TABLE IF NOT EXISTS evaluations (
    key TEXT PRIMARY KEY,
    candidate_id TEXT,
    code_sha TEXT NOT NULL,
    params TEXT NOT NULL,
    workload TEXT NOT NULL,
    rate REAL,
    result TEXT NOT NULL,
    seconds REAL NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS evaluations_candidate ON evaluations(candidate_id);
"""


def unified_diff(old: str | None, new: str | None, old_name: str = "parent",
                 new_name: str = "candidate") -> str:
    return "".join(difflib.unified_diff(
        (old or "").splitlines(keepends=True), (new or "").splitlines(keepends=True),
        fromfile=old_name, tofile=new_name,
    ))


@dataclass
class Candidate:
    """One archive row, decoded."""

    id: str
    seq: int
    created: float
    parent_id: str | None
    island: int
    origin: str
    proposer: str
    code: str | None
    code_sha: str | None
    program_sha: str | None
    diff: str
    status: str
    failure: str
    params: dict[str, Any]
    screen_score: float | None
    train_score: float | None
    validation_score: float | None
    gate: dict[str, Any] | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    attempts: int = 0
    model: str = ""
    raw: list[str] = field(default_factory=list)
    eval_seconds: float = 0.0
    updated: float = 0.0
    copy_of: str = ""  # the reference policy this candidate's code is (``autotuner.lineage``)
    explanation: dict[str, Any] | None = None  # ``autotuner.diagnose.Explanation.to_dict()``

    @property
    def promotable(self) -> bool:
        """A proposal that is not a copy of a reference policy: a copy behaves exactly as that
        reference, so it can never be reported as a discovery."""
        return self.origin == "proposal" and not self.copy_of

    @property
    def label(self) -> str:
        """The id, with the reference it copies when it is one: ``c0003 (copy of prefix_aware)``."""
        return f"{self.id} (copy of {self.copy_of})" if self.copy_of else self.id


_JSON_COLUMNS = {"params": {}, "gate": None, "raw": [], "explanation": None}
# Columns added after the first schema, with their declarations: an older archive gets them
# when opened (SQLite adds a column with its default to every row).
_ADDED_COLUMNS = {"copy_of": "TEXT NOT NULL DEFAULT ''", "explanation": "TEXT"}


def _row_to_candidate(row: sqlite3.Row) -> Candidate:
    data = dict(row)
    for key, empty in _JSON_COLUMNS.items():
        text = data.get(key)
        data[key] = json.loads(text) if text else empty
    return Candidate(**data)


class ArchiveError(RuntimeError):
    pass


class Archive:
    """The SQLite archive of one campaign."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per change.
        self.conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=30.0,
                                    check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        with self.transaction():
            for statement in _SCHEMA.split(";\n"):
                if statement.strip():
                    self.conn.execute(statement)
            if self.get_meta("schema_version") is None:
                self._set_meta("schema_version", SCHEMA_VERSION)
            have = {row[1] for row in self.conn.execute("PRAGMA table_info(candidates)")}
            for column, declaration in _ADDED_COLUMNS.items():
                if column not in have:
                    self.conn.execute(f"ALTER TABLE candidates ADD COLUMN {column} {declaration}")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (KeyboardInterrupt too)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def integrity_ok(self) -> bool:
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # ------------------------------------------------------------------ meta
    def _set_meta(self, key: str, value: Any) -> None:
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, json.dumps(json_safe(value))),
        )

    def set_meta(self, key: str, value: Any) -> None:
        with self.transaction():
            self._set_meta(key, value)

    def set_meta_many(self, items: Mapping[str, Any]) -> None:
        with self.transaction():
            for key, value in items.items():
                self._set_meta(key, value)

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    # ------------------------------------------------------------------ candidates
    def next_seq(self) -> int:
        row = self.conn.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM candidates").fetchone()
        return int(row[0])

    def add_candidate(
        self,
        *,
        origin: str,
        code: str | None,
        status: str,
        parent_id: str | None = None,
        island: int = 0,
        proposer: str = "",
        failure: str = "",
        params: Mapping[str, Any] | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost_usd: float = 0.0,
        attempts: int = 0,
        model: str = "",
        raw: Iterable[str] = (),
        candidate_id: str | None = None,
        files_dir: str | Path | None = None,
        copy_of: str = "",
    ) -> Candidate:
        """Insert a candidate (and write its file into ``files_dir``) in one transaction."""
        if status not in STATUSES:
            raise ArchiveError(f"unknown status {status!r}")
        now = time.time()
        with self.transaction():
            seq = self.next_seq()
            cid = candidate_id or f"c{seq:04d}"
            parent_code = None
            if parent_id is not None:
                row = self.conn.execute("SELECT code FROM candidates WHERE id=?",
                                        (parent_id,)).fetchone()
                parent_code = row[0] if row else None
            diff = unified_diff(parent_code, code, parent_id or "/dev/null", cid) if code else ""
            self.conn.execute(
                "INSERT INTO candidates(id, seq, created, parent_id, island, origin, proposer,"
                " code, code_sha, program_sha, diff, status, failure, params, prompt_tokens,"
                " completion_tokens, cost_usd, attempts, model, raw, updated, copy_of)"
                " VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (cid, seq, now, parent_id, island, origin, proposer, code,
                 sha256(code) if code is not None else None,
                 program_sha(code) if code is not None else None, diff, status, failure,
                 canonical(params or {}), prompt_tokens, completion_tokens, cost_usd, attempts,
                 model, json.dumps(list(raw)), now, copy_of),
            )
            if files_dir is not None and code is not None:
                _write_file(Path(files_dir) / f"{cid}.py", code)
        return self.get(cid)

    def update(self, candidate_id: str, **changes: Any) -> Candidate:
        """Change columns of one candidate in one transaction."""
        if not changes:
            return self.get(candidate_id)
        allowed = {"status", "failure", "params", "screen_score", "train_score",
                   "validation_score", "gate", "eval_seconds", "island", "explanation"}
        bad = set(changes) - allowed
        if bad:
            raise ArchiveError(f"cannot update {sorted(bad)}")
        if "status" in changes and changes["status"] not in STATUSES:
            raise ArchiveError(f"unknown status {changes['status']!r}")
        cols, values = [], []
        for key, value in changes.items():
            if key in ("params", "gate", "explanation"):
                value = None if value is None else canonical(value)
            elif isinstance(value, float) and not math.isfinite(value):
                value = None
            cols.append(f"{key}=?")
            values.append(value)
        with self.transaction():
            cur = self.conn.execute(
                f"UPDATE candidates SET {', '.join(cols)}, updated=? WHERE id=?",
                (*values, time.time(), candidate_id),
            )
            if cur.rowcount != 1:
                raise ArchiveError(f"no candidate {candidate_id!r}")
        return self.get(candidate_id)

    def get(self, candidate_id: str) -> Candidate:
        row = self.conn.execute("SELECT * FROM candidates WHERE id=?", (candidate_id,)).fetchone()
        if row is None:
            raise ArchiveError(f"no candidate {candidate_id!r} in {self.path}")
        return _row_to_candidate(row)

    def find(self, candidate_id: str) -> Candidate | None:
        try:
            return self.get(candidate_id)
        except ArchiveError:
            return None

    def candidates(self, *, status: str | Iterable[str] | None = None,
                   origin: str | Iterable[str] | None = None,
                   island: int | None = None) -> list[Candidate]:
        sql, args = "SELECT * FROM candidates WHERE 1=1", []
        for col, value in (("status", status), ("origin", origin)):
            if value is None:
                continue
            values = [value] if isinstance(value, str) else list(value)
            sql += f" AND {col} IN ({','.join('?' * len(values))})"
            args += values
        if island is not None:
            sql += " AND island=?"
            args.append(island)
        return [_row_to_candidate(r) for r in self.conn.execute(sql + " ORDER BY seq", args)]

    def lineage(self, candidate_id: str) -> list[Candidate]:
        """The candidate, its parent, its parent's parent, ... (cycles are impossible: a parent
        always exists before its child)."""
        out: list[Candidate] = []
        seen: set[str] = set()
        cur: str | None = candidate_id
        while cur is not None and cur not in seen:
            seen.add(cur)
            cand = self.find(cur)
            if cand is None:
                break
            out.append(cand)
            cur = cand.parent_id
        return out

    def same_program(self, code: str) -> str | None:
        """The first candidate whose program equals ``code``'s (comments ignored), if any."""
        row = self.conn.execute(
            "SELECT id FROM candidates WHERE program_sha=? ORDER BY seq LIMIT 1",
            (program_sha(code),)).fetchone()
        return None if row is None else str(row[0])

    def count(self, *, origin: str | None = None) -> int:
        if origin is None:
            return int(self.conn.execute("SELECT COUNT(*) FROM candidates").fetchone()[0])
        return int(self.conn.execute("SELECT COUNT(*) FROM candidates WHERE origin=?",
                                     (origin,)).fetchone()[0])

    def spend(self) -> dict[str, float]:
        row = self.conn.execute(
            "SELECT COALESCE(SUM(prompt_tokens),0), COALESCE(SUM(completion_tokens),0),"
            " COALESCE(SUM(cost_usd),0) FROM candidates").fetchone()
        return {"prompt_tokens": int(row[0]), "completion_tokens": int(row[1]),
                "tokens": int(row[0]) + int(row[1]), "cost_usd": float(row[2])}

    def failures_by_reason(self) -> dict[str, int]:
        """Failed proposals and evaluations, counted by the first words of their reason."""
        out: dict[str, int] = {}
        for (status, failure) in self.conn.execute(
            "SELECT status, failure FROM candidates WHERE status IN (?,?,?)",
            (PROPOSAL_FAILED, FAILED, SCREENED_OUT),
        ):
            out[failure_category(status, failure)] = out.get(
                failure_category(status, failure), 0) + 1
        return out

    # ------------------------------------------------------------------ scores
    def set_scores(self, candidate_id: str, phase: str,
                   scores: Mapping[str, tuple[float | None, Mapping[str, Any]]]) -> None:
        with self.transaction():
            for workload, (score, detail) in scores.items():
                self.conn.execute(
                    "INSERT INTO scores(candidate_id, phase, workload, score, detail)"
                    " VALUES(?,?,?,?,?) ON CONFLICT(candidate_id, phase, workload)"
                    " DO UPDATE SET score=excluded.score, detail=excluded.detail",
                    (candidate_id, phase, workload,
                     None if score is None or not math.isfinite(score) else float(score),
                     canonical(detail)),
                )

    def scores(self, candidate_id: str, phase: str | None = None
               ) -> dict[str, dict[str, tuple[float | None, dict[str, Any]]]]:
        """phase -> workload -> (score, detail)."""
        sql = "SELECT phase, workload, score, detail FROM scores WHERE candidate_id=?"
        args: list[Any] = [candidate_id]
        if phase is not None:
            sql += " AND phase=?"
            args.append(phase)
        out: dict[str, dict[str, tuple[float | None, dict[str, Any]]]] = {}
        for ph, wl, score, detail in self.conn.execute(sql + " ORDER BY phase, workload", args):
            out.setdefault(ph, {})[wl] = (score, json.loads(detail))
        return out

    # ------------------------------------------------------------------ evaluations
    def get_evaluation(self, key: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT result FROM evaluations WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def get_evaluations(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        keys = list(keys)
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(keys), 500):
            part = keys[i:i + 500]
            for key, result in self.conn.execute(
                f"SELECT key, result FROM evaluations WHERE key IN ({','.join('?' * len(part))})",
                part,
            ):
                out[key] = json.loads(result)
        return out

    def put_evaluation(self, key: str, *, candidate_id: str | None, code_sha: str,
                       params: Mapping[str, Any], workload: str, rate: float | None,
                       result: Mapping[str, Any], seconds: float) -> None:
        with self.transaction():
            self.conn.execute(
                "INSERT OR IGNORE INTO evaluations(key, candidate_id, code_sha, params, workload,"
                " rate, result, seconds, created) VALUES(?,?,?,?,?,?,?,?,?)",
                (key, candidate_id, code_sha, canonical(params), workload, rate,
                 canonical(result), seconds, time.time()))

    def evaluation_count(self, candidate_id: str | None = None) -> int:
        sql, args = ("", ()) if candidate_id is None else (" WHERE candidate_id=?", (candidate_id,))
        return int(self.conn.execute("SELECT COUNT(*) FROM evaluations" + sql, args).fetchone()[0])


def failure_category(status: str, failure: str) -> str:
    """A short bucket for the progress display and status table: 'check', 'no code', ..."""
    text = (failure or "").lower()
    if status == SCREENED_OUT:
        return "rejected early" if text.startswith("rejected early") else "screened out"
    if status == PROPOSAL_FAILED:
        for needle, label in (("check rejected", "check"), ("no code", "no code"),
                              ("did not apply", "edit did not apply"), ("budget", "budget"),
                              ("timeout", "timeout"), ("timed out", "timeout"),
                              ("endpoint", "endpoint error"), ("duplicate", "duplicate")):
            if needle in text:
                return label
        return "proposal"
    for needle, label in (("timed out", "timeout"), ("timeout", "timeout"),
                          ("memory", "memory"), ("partition", "illegal decision"),
                          ("route", "illegal decision"), ("sandbox", "sandbox")):
        if needle in text:
            return label
    return "evaluation"


def _write_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
