"""A campaign, wired from its phases: propose, check, screen, tune, archive; then validate the
finalists and gate them.

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
candidates continue, and no finished evaluation runs again.

A new campaign's folder appears only once its setup has passed (``lifecycle``): the preflight
before anything is written, then the baseline's first evaluation in a hidden staging folder,
renamed into place when that succeeds.
"""

from __future__ import annotations

import shutil
import signal
import threading
from typing import Any

from autotuner.campaign import lifecycle
from autotuner.campaign.baseline import baseline_phase, stored_baseline
from autotuner.campaign.errors import CampaignError, WorkloadRefused
from autotuner.campaign.finalize import finalize_phase, summary
from autotuner.campaign.preflight import describe_setup, preflight
from autotuner.campaign.progress import fmt_duration
from autotuner.campaign.search import search_phase
from autotuner.campaign.seeds import seeds_phase
from autotuner.campaign.state import CampaignState

EXIT_OK, EXIT_INTERRUPTED = 0, 130  # as autotuner.commands.common has them


class Campaign(CampaignState):
    """One campaign run (new or resumed). ``run()`` returns an exit status."""

    def run(self) -> int:
        """Run (or resume) the campaign. Setup problems raise CampaignError before anything is
        kept; any other failure of the loop is turned into one CampaignError line too."""
        if self.resume:
            finished = lifecycle.finished_message(self)
            if finished:
                self.progress.log(finished)
                return EXIT_OK
        try:
            preflight(self)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        if not self.resume:
            lifecycle.refuse_existing(self)
            self.dir, self.setting_up = lifecycle.staging_dir(self.final_dir), True
        with lifecycle.CampaignLock(self.dir):
            try:
                with _sigterm_interrupts():
                    if self.setting_up:
                        lifecycle.clear_stale_setup(self)
                        lifecycle.refuse_existing(self)  # again, now that we hold its lock
                    return self._run()
            except KeyboardInterrupt:
                self.progress.clear()
                self.progress.log(
                    "interrupted during setup: nothing was kept; run the same command again"
                    if self.setting_up else
                    f"interrupted: {self.cfg.name} stopped cleanly; continue with "
                    f"`autotuner resume {self.resume_arg()}`")
                return EXIT_INTERRUPTED
            except WorkloadRefused:
                if not self.resume:  # a refused yardstick: a new campaign keeps nothing
                    shutil.rmtree(self.dir, ignore_errors=True)
                raise
            except CampaignError:
                raise
            except Exception as exc:  # noqa: BLE001 - one line for the user, never a traceback
                raise CampaignError(lifecycle.failure_line(self, exc)) from exc
            finally:
                lifecycle.close_folder(self)
                if self.setting_up:  # the setup did not finish: keep nothing of it
                    shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self) -> int:
        """The phases, from the one the archive records."""
        lifecycle.open_folder(self)
        phase = self._starting_phase()
        if phase == "done":
            self.progress.log("the campaign is complete; `autotuner status "
                              f"{self.resume_arg()}` shows its candidates")
            return EXIT_OK
        describe_setup(self)
        if phase == "baseline":
            self.baseline = baseline_phase(self)
            phase = self.advance("seeds")
        else:
            self.baseline = stored_baseline(self)
        if phase == "seeds":
            seeds_phase(self)
            phase = self.advance("search")
        if phase == "search":
            search_phase(self)
            phase = self.advance("finalize")
        if phase == "finalize":
            finalize_phase(self)
            self.advance("done")
        summary(self)
        return EXIT_OK

    def _starting_phase(self) -> str:
        """The phase to start at (a finished campaign given a larger budget searches on), and
        the line that says where the campaign is."""
        assert self.archive is not None
        phase = self.archive.get_meta("phase", "baseline")
        done_props = self.archive.count(origin="proposal")
        if phase == "done" and self.extend and done_props < self.cfg.budget.proposals:
            phase = "search"  # resumed with a larger budget
            self.archive.set_meta("phase", phase)
        if self.resume:
            self.progress.log(f"resuming campaign {self.cfg.name} in {self.dir} at phase "
                              f"{phase} ({done_props} proposals so far, "
                              f"{fmt_duration(self.elapsed0)} spent)")
        else:
            self.progress.log(f"campaign {self.cfg.name}: results in {self.final_dir} (set up "
                              f"in {self.dir} until the baseline's first evaluation passes)")
        return phase


class _sigterm_interrupts:
    """SIGTERM (kill, a scheduler's stop) ends the campaign as Ctrl-C does: cleanly, resumable.
    Only the main thread can install a handler; elsewhere this does nothing."""

    def __enter__(self) -> None:
        self.main = threading.current_thread() is threading.main_thread()
        if self.main:
            self.old = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, _raise_interrupt)

    def __exit__(self, *exc: Any) -> None:
        if self.main:
            signal.signal(signal.SIGTERM, self.old)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
