"""The campaign: the search loop that proposes, checks, screens, tunes and archives policies,
then validates the finalists and gates them. One module per phase; ``core`` wires them.

    state      what every phase shares (config, folder, archive, evaluator, clock, display)
    lifecycle  the folder: lock, staging until the setup passed, open/close, a finished resume
    preflight  what can fail for the user's setup, before anything is written
    proposers  which proposer writes the proposals (LLM endpoint or the offline one)
    baseline   phase 1: the tuned baseline and its capacities (the yardstick)
    seeds      phase 2: reference policies that start islands
    candidate  one candidate through screening and tuning
    parents    islands, migration, parent tournament, the proposal request
    search     phase 3: the loop of proposals in flight and candidates processed
    finalize   phase 4: validation, the gate, promotion; the summary
    progress   the event lines and the live status line
"""

from autotuner.campaign.core import Campaign
from autotuner.campaign.errors import CampaignError, WorkloadRefused, one_line
from autotuner.campaign.lifecycle import CampaignLock, campaign_dir, staging_dir
from autotuner.campaign.progress import Progress
from autotuner.campaign.proposers import make_proposer
from autotuner.campaign.state import PHASES, Baseline, CampaignState

__all__ = [
    "PHASES", "Baseline", "Campaign", "CampaignError", "CampaignLock", "CampaignState",
    "Progress", "WorkloadRefused", "campaign_dir", "make_proposer", "one_line", "staging_dir",
]
