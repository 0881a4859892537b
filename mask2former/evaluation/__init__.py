"""Evaluation: every metric the model's outputs allow on a dataset (PQ, mask AP, mIoU) in one inference pass."""
# First: every SemSegEvaluator, ours and those that users' scripts build, reads label PNGs under NumPy 2.
from . import sem_seg_loading  # noqa: F401  isort: skip
from .build import build_evaluator
from .instance_evaluation import InstanceSegEvaluator
from .summary import SummarizingEvaluators, summarize_results

__all__ = ["build_evaluator", "InstanceSegEvaluator", "SummarizingEvaluators", "summarize_results"]
