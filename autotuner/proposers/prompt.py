"""The one place where a proposal request becomes text for a model (prompts/*.j2).

The campaign hands over data (``ProposalRequest``: the SLO, cluster, workloads, parent and its
scores); every sentence the model reads is written in the templates, so wording changes happen
there and nothing downstream ever has to read prose back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jinja2

from autotuner.check import ALLOWED_BUILTINS, ALLOWED_MODULES
from autotuner.proposers.base import ParentInfo, ProposalRequest
from autotuner.resources import asset_dir
from autotuner.sim.api import MAX_WAITING_VIEW

# SLO terms the goal sentence phrases itself; any other field of the SLO is listed by name.
PHRASED_SLO_TERMS = ("ttft_s", "tpot_s", "share")


def _fmt(value: Any) -> str:
    """Numbers for a prompt: short, no 0.30000000000000004."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def _number(value: float, spec: str) -> str:
    """``format(value, spec)``, for the templates (``{{ x | number(".0%") }}``)."""
    return format(value, spec)


def _one_line(text: str) -> str:
    """A paragraph written over several template lines, as the one line the model reads."""
    return text.strip("\n").replace("\n", " ")


def shown_scores(info: ParentInfo) -> dict[str, float]:
    """An archive member's scores as the model sees them, by name."""
    scores: dict[str, float] = {}
    if info.train_score is not None:
        scores["objective"] = info.train_score
    for label, gain in info.workload_gains.items():
        scores[f"gain[{label}]"] = gain
    return scores


def extra_slo_terms(slo: Mapping[str, Any]) -> dict[str, Any]:
    """The SLO's fields that the goal sentence does not phrase (unset ones left out)."""
    return {k: v for k, v in slo.items() if k not in PHRASED_SLO_TERMS and v is not None}


def template_env() -> jinja2.Environment:
    """The prompts/ templates; StrictUndefined so a missing variable fails loudly in tests."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(asset_dir("prompts"))),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["fmt"] = _fmt
    env.filters["number"] = _number
    env.filters["one_line"] = _one_line
    env.globals["shown_scores"] = shown_scores
    env.globals["extra_slo_terms"] = extra_slo_terms
    return env


def render_api_doc(env: jinja2.Environment | None = None) -> str:
    """The policy API as the model reads it (prompts/policy_api.md.j2)."""
    env = env or template_env()
    return env.get_template("policy_api.md.j2").render(max_waiting_view=MAX_WAITING_VIEW)


class PromptBuilder:
    """Renders the opening messages of a request and the fix-up messages of the repair loop."""

    def __init__(self, env: jinja2.Environment | None = None):
        self._env = env or template_env()
        self._api_doc: str | None = None

    def api_doc(self) -> str:
        if self._api_doc is None:
            self._api_doc = render_api_doc(self._env)
        return self._api_doc

    def system(self, request: ProposalRequest) -> str:
        return self._env.get_template("system.j2").render(
            api_doc=(request.api_doc or self.api_doc()).strip(),
            # The checker's own allow-lists, so the prompt can never drift from what it accepts.
            allowed_modules=ALLOWED_MODULES,
            allowed_builtins=ALLOWED_BUILTINS,
        )

    def user(self, request: ProposalRequest) -> str:
        return self._env.get_template("propose.j2").render(
            objective=request.objective,
            cluster=request.cluster,
            workloads=request.workloads,
            baseline_params=request.baseline_params,
            parent=request.parent,
            inspirations=request.inspirations,
            notes=request.notes,
        )

    def messages(self, request: ProposalRequest) -> list[dict[str, str]]:
        """The opening system + user messages for a request."""
        return [
            {"role": "system", "content": self.system(request)},
            {"role": "user", "content": self.user(request)},
        ]

    def fix(self, reasons: Sequence[str], code: str | None) -> str:
        """The message that sends an unusable reply or a refused file back with the reasons."""
        return self._env.get_template("fix.j2").render(reasons=list(reasons), code=code)
