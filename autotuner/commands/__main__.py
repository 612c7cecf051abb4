"""``python -m autotuner.commands``: the ``autotuner`` command without an installed script."""

import sys

from autotuner.commands import main

sys.exit(main())
