"""One table of the headline panoptic, instance and semantic metrics of an evaluation, logged and saved."""
import json
import logging
import os
import time
from collections import OrderedDict

from detectron2.evaluation import DatasetEvaluators
from detectron2.utils import comm
from tabulate import tabulate

logger = logging.getLogger(__name__)

# (task, metric) of the summary in table order; tasks are the keys of detectron2's evaluator results.
SUMMARY_COLUMNS = (
    ("panoptic_seg", "PQ"),
    ("panoptic_seg", "SQ"),
    ("panoptic_seg", "RQ"),
    ("panoptic_seg", "PQ_th"),
    ("panoptic_seg", "PQ_st"),
    ("segm", "AP"),
    ("segm", "AP50"),
    ("segm", "AP75"),
    ("sem_seg", "mIoU"),
    ("sem_seg", "fwIoU"),
    ("sem_seg", "mACC"),
    ("sem_seg", "pACC"),
    ("sem_seg", "IoU"),  # Cityscapes' class IoU (cityscapesscripts)
    ("sem_seg", "iIoU"),
)


def summarize_results(results):
    """The headline metrics found in ``results`` (``{task: {metric: value}}``), flat, in table order."""
    return OrderedDict(
        (metric, float(results[task][metric])) for task, metric in SUMMARY_COLUMNS if metric in results.get(task, {})
    )


def format_summary(summary):
    """A one-row pipe table of a ``summarize_results`` dict."""
    return tabulate([list(summary.values())], headers=list(summary), tablefmt="pipe", floatfmt=".2f")


class SummarizingEvaluators(DatasetEvaluators):
    """
    Several evaluators fed by the same inference pass (as ``DatasetEvaluators``); ``evaluate`` also logs how long
    each took, logs the summary table and writes all results to ``output_file`` as JSON.
    """

    def __init__(self, evaluators, output_file=None):
        super().__init__(evaluators)
        self._output_file = output_file

    def evaluate(self):
        results = OrderedDict()
        for evaluator in self._evaluators:
            start = time.perf_counter()
            result = evaluator.evaluate()
            logger.info("%s finished in %.1f s", type(evaluator).__name__, time.perf_counter() - start)
            if not comm.is_main_process() or result is None:
                continue
            for task, metrics in result.items():
                if task in results:
                    raise ValueError(f"two evaluators both report {task!r}; combine evaluators of distinct tasks")
                results[task] = metrics
        if not comm.is_main_process():
            return results

        summary = summarize_results(results)
        logger.info("Evaluation summary:\n" + format_summary(summary))
        if self._output_file:
            os.makedirs(os.path.dirname(os.path.abspath(self._output_file)), exist_ok=True)
            with open(self._output_file, "w") as f:
                json.dump({"summary": summary, "results": results}, f, indent=2, default=float)
            logger.info("Evaluation results written to %s", self._output_file)
        return results
