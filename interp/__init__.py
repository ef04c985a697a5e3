"""Safety-Token probing, the Any-Depth Alignment guard and causal analysis for chat LLMs.

The subpackages follow the data path: ``data`` → ``spans`` → ``model`` → ``generate`` → ``extract`` → ``probes`` →
``guard`` / ``evaluate`` → ``causal`` → ``serve``, with ``cli`` on top (see docs/design.md in the repository).
"""

__version__ = "0.5.0"


class UserError(ValueError):
    """Bad input from the user: printed as one actionable line by the CLI, never a traceback."""
