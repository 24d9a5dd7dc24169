"""Evaluation: metrics, plots and the statistics of the champion gate. Pure functions, no stages."""


class EvaluationError(RuntimeError):
    """Nothing to evaluate or report (a missing or mismatched model); the message names the file."""
