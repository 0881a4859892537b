"""Evaluation: every metric the model's outputs allow on a dataset (PQ, mask AP, mIoU) in one inference pass."""
from .build import build_evaluator
from .instance_evaluation import InstanceSegEvaluator
from .summary import SummarizingEvaluators, summarize_results

__all__ = ["build_evaluator", "InstanceSegEvaluator", "SummarizingEvaluators", "summarize_results"]
