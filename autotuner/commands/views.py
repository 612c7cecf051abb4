"""What the commands that read a campaign share (``status``, ``diff``, ``show``, ``replay``,
``report``, ``gate``): which failures are expected, each one line on stderr and exit status 2
(``common.EXIT_USAGE``), and a closed pipe (``autotuner diff ... | head``), which is not one."""

from __future__ import annotations

import sys
from collections.abc import Callable

from autotuner.archive import ArchiveError
from autotuner.campaign import CampaignError
from autotuner.commands.common import EXIT_OK, EXIT_USAGE
from autotuner.config import ConfigError
from autotuner.gate import GateInputError
from autotuner.gate_file import GateFileError
from autotuner.report import ReportError
from autotuner.review import ReviewError
from autotuner.yardstick import YardstickError

EXPECTED = (ReviewError, ReportError, GateFileError, GateInputError, YardstickError,
            CampaignError, ConfigError, ArchiveError)


def guarded(command: str, body: Callable[[], int]) -> int:
    """``body()``, with an expected failure as one line and exit 2."""
    try:
        return body()
    except EXPECTED as exc:
        print(f"autotuner {command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        try:
            sys.stdout.close()
        except Exception:  # noqa: BLE001 - the reader is gone; nothing to tell it
            pass
        return EXIT_OK
