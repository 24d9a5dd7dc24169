"""Evaluation: metrics, plots and the statistics of the champion gate. Pure functions, no stages."""

from thawline.errors import EvaluationError

__all__ = ["EvaluationError"]
