"""``report_cache.json``: a second report costs seconds. The campaign's own evaluation cache is
only read (the campaign may be running); what the report measures anew is kept here, keyed by
the job's own identity, and derived data (latency CDFs, tuned references) under a key that
hashes every input that could change it."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autotuner.archive import Archive, canonical

CACHE_VERSION = 1


class ReportCache:
    """Evaluation results by job key, plus derived data by kind and key."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = {"version": CACHE_VERSION, "evaluations": {}, "derived": {}}
        if path.is_file():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
                if loaded.get("version") == CACHE_VERSION:
                    self.data = loaded
                    self.data.setdefault("evaluations", {})
                    self.data.setdefault("derived", {})
            except (OSError, ValueError):
                pass  # an unreadable cache is only a slower report
        self._dirty = False
        self._saved_at = time.monotonic()

    def get(self, kind: str, key: str) -> Any:
        return self.data["derived"].get(f"{kind}:{key}")

    def put(self, kind: str, key: str, value: Any) -> None:
        self.data["derived"][f"{kind}:{key}"] = json.loads(canonical(value))
        self._dirty = True
        self.save(force=True)

    def put_evaluation(self, key: str, result: Mapping[str, Any]) -> None:
        self.data["evaluations"][key] = json.loads(canonical(result))
        self._dirty = True
        self.save()

    def save(self, force: bool = False) -> None:
        if not self._dirty or (not force and time.monotonic() - self._saved_at < 2.0):
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, separators=(",", ":")), encoding="utf-8")
        tmp.replace(self.path)
        self._dirty = False
        self._saved_at = time.monotonic()


class EvaluationCache:
    """What ``scoring.Evaluator`` needs of an archive: results found in the campaign's own
    evaluation cache (read only) or in the report's; new ones go to the report's."""

    def __init__(self, archive: Archive, cache: ReportCache):
        self.archive = archive
        self.cache = cache

    def get_evaluations(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        found = self.archive.get_evaluations(keys)
        mine = self.cache.data["evaluations"]
        for k in keys:
            if k not in found and k in mine:
                found[k] = mine[k]
        return found

    def put_evaluation(self, key: str, *, result: Mapping[str, Any], **_: Any) -> None:
        self.cache.put_evaluation(key, result)
