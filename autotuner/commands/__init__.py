"""The commands wing: every argparse and printing line of the ``autotuner`` command.

One module per command, each with ``HELP``, ``add_arguments(parser)`` and ``run(args) -> exit
status``; ``common`` holds what several share (exit codes, sandbox choices, options, output
formats); ``main`` builds the parser and is the console entry point. The work lives in the stages
below (``autotuner.evaluate``, ``autotuner.simulation``, ``autotuner.sim``...), which never import
this package. This file imports nothing, so ``common`` can be used without loading every command.
"""
