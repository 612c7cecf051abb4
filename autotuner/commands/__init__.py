"""Command-line wiring, one module per verb: argparse lines and exit codes, the work elsewhere."""
