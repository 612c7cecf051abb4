"""autotuner: LLM-driven search for serving heuristics, scored in a sandboxed cluster simulator."""

__version__ = "0.1.0"
