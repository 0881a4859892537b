"""
Multi-machine training on one host: two "machines" (``--num-machines 2 --machine-rank 0/1``) with one or two
processes each, talking over gloo on the CPU through ``--dist-url tcp://127.0.0.1:<port>``, train the tiny model on
the toy dataset. Every process must finish with finite losses and the same weights, changed by training.
"""
import json
import math
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

from conftest import R50, ROOT, TINY_MODEL
from mask2former.toy import generate_toy_panoptic

TINY = [
    *TINY_MODEL,
    "MODEL.MASK_FORMER.DEC_LAYERS 4",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES 10",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS 256",
    "DATASETS.TRAIN ('toy_panoptic_train_panoptic',)",
    "DATASETS.TEST ()",
    "DATALOADER.NUM_WORKERS 0",
    "INPUT.IMAGE_SIZE 64",
    "SOLVER.BASE_LR 0.001",
    "SOLVER.MAX_ITER 3",
    "SOLVER.CHECKPOINT_PERIOD 1000",
]

# Runs train_net's setup, Trainer and launch from train_net's own command line, and in addition saves every
# process's weights (train_net itself checkpoints on the main process only) and the main process's losses.
WORKER = """
import json, os, sys
sys.path.insert(0, {root!r})
import torch
from detectron2.engine import launch
from detectron2.utils import comm
import train_net


def main(args):
    cfg = train_net.setup(args)
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    model = getattr(trainer.model, "module", trainer.model)
    rank = comm.get_rank()
    torch.save(model.state_dict(), os.path.join(cfg.OUTPUT_DIR, f"init_rank{{rank}}.pth"))
    trainer.train()
    torch.save(model.state_dict(), os.path.join(cfg.OUTPUT_DIR, f"final_rank{{rank}}.pth"))
    if comm.is_main_process():
        losses = [v for v, _ in trainer.storage.history("total_loss").values()]
        with open(os.path.join(cfg.OUTPUT_DIR, "losses.json"), "w") as f:
            json.dump(losses, f)


if __name__ == "__main__":
    args = train_net.default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
"""


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    generate_toy_panoptic(str(root / "toy_panoptic"), num_train=8, num_val=1, seed=0)
    return root


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("procs_per_machine", [1, 2])
def test_two_machines_train_identical_weights(tmp_path, datasets_root, procs_per_machine):
    world_size = 2 * procs_per_machine
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(root=str(ROOT)))
    out = tmp_path / "output"
    opts = [part for o in TINY for part in o.split(" ", 1)]
    opts += ["SOLVER.IMS_PER_BATCH", str(world_size), "OUTPUT_DIR", str(out)]
    dist_url = f"tcp://127.0.0.1:{_free_port()}"
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), OMP_NUM_THREADS="1")
    machines = [
        subprocess.Popen(
            [sys.executable, str(worker), "--config-file", str(R50), "--num-gpus", str(procs_per_machine)]
            + ["--num-machines", "2", "--machine-rank", str(rank), "--dist-url", dist_url]
            + opts,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, so a hung run is stopped with its children
        )
        for rank in range(2)
    ]
    logs = []
    try:
        for machine in machines:
            logs.append(machine.communicate(timeout=400)[0])
    except subprocess.TimeoutExpired:
        for machine in machines:
            os.killpg(machine.pid, signal.SIGKILL)
        pytest.fail("the two machines did not finish within 400 s")
    for rank, (machine, log) in enumerate(zip(machines, logs)):
        assert machine.returncode == 0, f"machine {rank} failed:\n{log[-3000:]}"

    losses = json.loads((out / "losses.json").read_text())
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    finals = [torch.load(out / f"final_rank{r}.pth") for r in range(world_size)]
    init = torch.load(out / "init_rank0.pth")
    for r in range(1, world_size):
        for key, value in finals[0].items():
            assert torch.equal(value, finals[r][key]), f"rank {r} differs from rank 0 in {key}"
    changed = {k for k, v in finals[0].items() if not torch.equal(v, init[k])}
    for key in ("backbone.stem.conv1.weight", "sem_seg_head.pixel_decoder.mask_features.weight"):
        assert key in changed, f"training must have updated {key}"
    assert "sem_seg_head.predictor.class_embed.weight" in changed
    assert all(torch.isfinite(v).all() for v in finals[0].values() if v.is_floating_point())
    # The main process's checkpoint holds the same weights.
    checkpoint = torch.load(out / "model_final.pth", weights_only=False)["model"]
    assert all(torch.equal(checkpoint[k], v) for k, v in finals[0].items())
