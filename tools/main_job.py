#!/usr/bin/env python
"""
The main job: Mask2Former trained and evaluated on the project's own dataset, out of the box, on CPU, for one task
(--task): panoptic (the default), semantic or instance segmentation.

1. generates the toy dataset (COCO panoptic layout, with semantic PNGs and a COCO instance json) if it is missing;
2. trains the task's tiny config with the project's Trainer (the real registration, mapper and evaluators),
   evaluating the task's metrics (panoptic: PQ / AP / mIoU, semantic: mIoU, instance: AP) on the val split every
   TEST.EVAL_PERIOD iterations and at the end;
3. prints the results table and writes, under --output:
   ``main_job.json`` (final metrics, metrics over iterations, timings), ``training_curves.png`` (loss and
   metrics over iterations), ``vis/*.png`` (image | ground truth | prediction for a few val images),
   ``model_final.pth`` and the evaluator outputs (``inference/results.json``).

    python tools/main_job.py [--task semantic] [--output DIR] [--opts SOLVER.MAX_ITER 600 ...]
"""
import argparse
import json
import logging
import os
import sys
import time

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from PIL import Image  # noqa: E402


from mask2former import get_maskformer2_cfg  # noqa: E402
from mask2former.engine import Trainer  # noqa: E402
from mask2former.toy import default_root, generate_toy_panoptic, is_generated  # noqa: E402
from mask2former.evaluation.summary import format_summary, summarize_results  # noqa: E402
from mask2former.visualization import draw_ground_truth, draw_prediction, read_image  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
logger = logging.getLogger("main_job")
# Per task: its config, and the metrics over training as (key in metrics.json, label); the first one is in
# every evaluation record.
TASKS = {
    "panoptic": (
        "configs/toy/maskformer2_R50_narrow_toy.yaml",
        (("panoptic_seg/PQ", "PQ"), ("segm/AP", "AP"), ("sem_seg/mIoU", "mIoU")),
    ),
    "semantic": ("configs/toy/maskformer2_R50_narrow_toy_semantic.yaml", (("sem_seg/mIoU", "mIoU"),)),
    "instance": ("configs/toy/maskformer2_R50_narrow_toy_instance.yaml", (("segm/AP", "AP"),)),
}


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), default="panoptic", help="default: %(default)s")
    parser.add_argument("--config-file", help="default: the task's config under configs/toy/")
    parser.add_argument("--output", help="default: output/main_job (panoptic), output/main_job_<task> (others)")
    parser.add_argument("--num-train", type=int, default=400, help="images to generate if the dataset is missing")
    parser.add_argument("--num-val", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-vis", type=int, default=6, help="val images to visualize")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")
    return parser


def setup_cfg(args):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = get_maskformer2_cfg(args.config_file, ["MODEL.DEVICE", device, "OUTPUT_DIR", args.output, *args.opts])
    cfg.freeze()
    return cfg


def read_history(metrics_json, max_iter, metrics):
    """
    From the trainer's metrics.json: (iteration, total loss) as logged, and ``metrics`` (the task's
    ``(key, label)`` pairs) of every evaluation with the number of iterations trained before it (a record's
    "iteration" is the last step run; the final evaluation's is ``max_iter``).
    """
    losses, evals = [], []
    with open(metrics_json) as f:
        for line in f:
            record = json.loads(line)
            if "total_loss" in record:
                losses.append((record["iteration"] + 1, record["total_loss"]))
            if metrics[0][0] in record:
                trained = min(record["iteration"] + 1, max_iter)
                evals.append({"iteration": trained, **{k: record.get(k) for k, _ in metrics}})
    return losses, evals


def plot_curves(losses, evals, metrics, path):
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    if losses:
        ax_loss.plot(*zip(*losses), color="tab:red")
    ax_loss.set(xlabel="iteration", ylabel="total loss", title="training loss", yscale="log")
    for key, label in metrics:
        points = [(e["iteration"], e[key]) for e in evals if e.get(key) is not None]
        if points:
            ax_metric.plot(*zip(*points), marker="o", label=label)
    ax_metric.set(xlabel="iteration", ylabel="%", title="val metrics", ylim=(0, 100))
    ax_metric.legend()
    ax_metric.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _titled(panel, title):
    """The panel under a white strip with its title."""
    strip = np.full((28, panel.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(strip, title, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, panel], axis=0)


@torch.no_grad()
def write_visualizations(cfg, model, folder, count, mode):
    """Image | ground truth | prediction (of ``mode``, a task) for the first ``count`` val images."""
    os.makedirs(folder, exist_ok=True)
    dataset_name = cfg.DATASETS.TEST[0]
    metadata = MetadataCatalog.get(dataset_name)
    model.eval()
    paths = []
    for d in DatasetCatalog.get(dataset_name)[:count]:
        rgb = read_image(d["file_name"])
        image = torch.as_tensor(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        outputs = model([{"image": image, "height": rgb.shape[0], "width": rgb.shape[1]}])[0]
        truth = draw_ground_truth(rgb, d, metadata)
        prediction = draw_prediction(rgb, outputs, metadata, mode)
        photo = np.asarray(Image.fromarray(rgb).resize(truth.shape[1::-1], Image.NEAREST))
        panels = [_titled(p, t) for p, t in ((photo, "image"), (truth, "ground truth"), (prediction, "prediction"))]
        path = os.path.join(folder, os.path.splitext(os.path.basename(d["file_name"]))[0] + ".png")
        Image.fromarray(np.concatenate(panels, axis=1)).save(path)
        paths.append(path)
    return paths


def main(argv=None):
    args = get_parser().parse_args(argv)
    config_file, metrics = TASKS[args.task]
    args.config_file = args.config_file or os.path.join(REPO, config_file)
    default_output = "main_job" if args.task == "panoptic" else f"main_job_{args.task}"
    args.output = args.output or os.path.join(REPO, "output", default_output)
    os.makedirs(args.output, exist_ok=True)
    setup_logger(output=os.path.join(args.output, "log.txt"))
    setup_logger(name="mask2former")
    setup_logger(name="main_job")
    timings = {}
    start = time.perf_counter()

    root = default_root()
    if not is_generated(root):
        logger.info(f"Generating the toy dataset at {root} ...")
        generate_toy_panoptic(root, num_train=args.num_train, num_val=args.num_val, seed=args.seed)
    timings["dataset_s"] = time.perf_counter() - start

    cfg = setup_cfg(args)
    # As train_net.py's detectron2 setup: SEED >= 0 makes the run repeatable (initial weights, data order and
    # augmentation); the default -1 draws a seed.
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED)
    # The job trains from scratch, and the trainer appends to metrics.json: a previous run's records would join
    # this run's history.
    metrics_json = os.path.join(cfg.OUTPUT_DIR, "metrics.json")
    if os.path.exists(metrics_json):
        os.remove(metrics_json)
    logger.info(f"Training {args.config_file} on {cfg.MODEL.DEVICE} with {torch.get_num_threads()} threads")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    tick = time.perf_counter()
    trainer.train()
    timings["train_and_eval_s"] = time.perf_counter() - tick

    with open(os.path.join(cfg.OUTPUT_DIR, "inference", "results.json")) as f:
        final = json.load(f)
    losses, evals = read_history(metrics_json, cfg.SOLVER.MAX_ITER, metrics)
    plot_curves(losses, evals, metrics, os.path.join(args.output, "training_curves.png"))
    tick = time.perf_counter()
    vis = write_visualizations(cfg, trainer.model, os.path.join(args.output, "vis"), args.num_vis, args.task)
    timings["visualization_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - start

    summary = summarize_results(final["results"])
    report = {
        "task": args.task,
        "config": args.config_file,
        "device": cfg.MODEL.DEVICE,
        "max_iter": cfg.SOLVER.MAX_ITER,
        "final": summary,
        "history": evals,
        "timings": timings,
        "visualizations": vis,
    }
    with open(os.path.join(args.output, "main_job.json"), "w") as f:
        json.dump(report, f, indent=2)

    history = "\n".join(
        f"  iter {e['iteration']:>5}: "
        + "  ".join(f"{label} {e[key]:.1f}" for key, label in metrics if e[key] is not None)
        for e in evals
    )
    print(f"\nMain job ({args.task}) results on {cfg.DATASETS.TEST[0]} after {cfg.SOLVER.MAX_ITER} iterations:\n")
    print(format_summary(summary))
    print(f"\nover training:\n{history}")
    print(
        "\ntime: dataset {dataset_s:.0f} s, training + evaluation {train_and_eval_s:.0f} s, "
        "visualizations {visualization_s:.0f} s, total {total_s:.0f} s".format(**timings)
    )
    print(f"outputs: {args.output} (main_job.json, training_curves.png, vis/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
