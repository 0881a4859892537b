#!/usr/bin/env python
"""
Train and evaluate Mask2Former with detectron2: the command line over ``mask2former.engine.Trainer``.

    python train_net.py --num-gpus 8 --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml
    python train_net.py --eval-only --config-file <config> MODEL.WEIGHTS <checkpoint>
    python train_net.py --eval-only --config-file <config> MODEL.WEIGHTS <checkpoint> TEST.AUG.ENABLED True  # + ms/flip
    python train_net.py --resume --config-file <config>                  # continue from OUTPUT_DIR/last_checkpoint

Several machines: run the same command on each, with ``--num-machines N --machine-rank i`` and the same
``--dist-url tcp://<host of rank 0>:<port>``. Without a GPU (MODEL.DEVICE cpu), each of the ``--num-gpus``
processes per machine trains on the CPU and they communicate over gloo.

Under torchrun or SLURM srun, which start one process per rank, leave out ``--num-gpus``: each process reads its
rank from the launcher's environment, e.g. ``torchrun --nnodes 2 --nproc-per-node 8 --rdzv-endpoint <host>:29500
train_net.py --config-file <config>`` or ``srun --ntasks-per-node 8 python train_net.py --config-file <config>``.
SIGTERM or SIGUSR1 (sent by schedulers before preempting a job) saves a checkpoint at the next iteration and
stops; ``--resume`` continues from it.
"""
from detectron2.engine import default_argument_parser as detectron2_argument_parser
from detectron2.engine import default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from mask2former import get_maskformer2_cfg
from mask2former.engine import Trainer, launch_job


def default_argument_parser():
    """detectron2's command line, plus ``--trust-config``."""
    parser = detectron2_argument_parser()
    parser.add_argument(
        "--trust-config",
        action="store_true",
        help="let Python tags in the config files run code (by default only arithmetic 'eval' tags load)",
    )
    return parser


def setup(args):
    """The config of the command line: detectron2's and DeepLab's defaults, Mask2Former's keys, file, overrides."""
    cfg = get_maskformer2_cfg(args.config_file, args.opts, trust_config=args.trust_config)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="mask2former")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        Trainer.build_checkpointer(cfg, model).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch_job(main, args)
