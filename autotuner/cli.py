"""Transitional: the command line moved to ``autotuner.commands``. This keeps ``autotuner.cli:main``
and ``python -m autotuner.cli`` working while branches that still use them are merged (and
``print_json`` for ``autotuner.bench``); then it goes, with every import of it."""

import sys

from autotuner.commands import main
from autotuner.commands.common import print_json

__all__ = ["main", "print_json"]

if __name__ == "__main__":
    sys.exit(main())
