"""``python -m autotuner.commands``: the ``autotuner`` command without an installed script."""

import sys

from autotuner.commands.main import main

sys.exit(main())
