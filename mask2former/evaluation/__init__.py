"""Evaluation: PQ, instance AP and semantic mIoU of one dataset in a single inference pass."""
from .build import build_evaluator
from .summary import SummarizingEvaluators, summarize_results

__all__ = ["build_evaluator", "SummarizingEvaluators", "summarize_results"]
