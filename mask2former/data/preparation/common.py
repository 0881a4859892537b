"""What the dataset conversions share: their command line, a parallel map with a progress line, segment boxes."""
import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

__all__ = ["bbox_xywh", "command_line", "map_with_progress"]


def command_line(argv, *, doc, folder, run, workers=True):
    """
    The ``datasets/prepare_*.py`` command line: ``--root`` (default ``$DETECTRON2_DATASETS/<folder>``) and, when
    ``workers``, ``--workers``; calls ``run(root, workers)`` and prints what it returns. A missing or malformed
    input prints ``error: ...`` and returns 2.
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_root = os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), folder)
    parser.add_argument("--root", default=default_root, help=f"the {folder}/ folder (default: %(default)s)")
    if workers:
        parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        print(run(args.root, max(1, getattr(args, "workers", 1))))
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def map_with_progress(function, jobs, *, workers, label):
    """
    ``[function(job) for job in jobs]``, in ``workers`` processes when more than one, printing
    ``<label>: <done>/<total> images, <seconds> s`` to stderr every 500 jobs and at the end.
    """
    jobs = list(jobs)
    start = time.perf_counter()
    results = []

    def report(done):
        if done % 500 == 0 or done == len(jobs):
            elapsed = time.perf_counter() - start
            print(f"{label}: {done}/{len(jobs)} images, {elapsed:.0f} s", file=sys.stderr, flush=True)

    if workers <= 1:
        for job in jobs:
            results.append(function(job))
            report(len(results))
        return results
    chunksize = max(1, min(64, len(jobs) // (4 * workers)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for result in pool.map(function, jobs, chunksize=chunksize):
            results.append(result)
            report(len(results))
    return results


def bbox_xywh(mask):
    """``[x, y, width, height]`` (ints) of the pixels set in a boolean (H, W) mask, which must not be empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]
