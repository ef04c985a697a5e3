"""Safety-Token probing, the Any-Depth Alignment guard and causal analysis for chat LLMs."""

__version__ = "0.1.0"


class UserError(ValueError):
    """Bad input from the user: printed as one actionable line by the CLI, never a traceback."""
