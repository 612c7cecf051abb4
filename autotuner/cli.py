"""Transitional: the command line moved to ``autotuner.commands``. This keeps
``autotuner.cli:main``, ``python -m autotuner.cli`` and ``from autotuner.cli import print_json``
working while branches that still use them are merged; then it goes, with every import of it."""

import sys

from autotuner.commands.common import print_json
from autotuner.commands.main import main

__all__ = ["main", "print_json"]

if __name__ == "__main__":
    sys.exit(main())
