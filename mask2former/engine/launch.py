"""
Starting the training processes: detectron2's ``launch`` (which spawns ``--num-gpus`` processes per machine), or,
under ``torchrun`` or SLURM ``srun``, which already started one process per rank, joining the job they describe in
their environment variables.
"""
import logging
import os
import re
from dataclasses import dataclass
from typing import List, Mapping, Optional

import torch
import torch.distributed as dist
from detectron2.engine import launch
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.utils import comm

__all__ = ["ClusterEnv", "cluster_env", "launch_job", "slurm_first_host", "slurm_tasks_per_node"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterEnv:
    """Where this process sits in a job started by a cluster launcher, and how the ranks find each other."""

    launcher: str  # "torchrun" or "slurm"
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    init_method: str  # for torch.distributed.init_process_group


def slurm_tasks_per_node(value: str) -> List[int]:
    """SLURM's compressed task counts, e.g. ``"2(x3),1"``, as one count per node: ``[2, 2, 2, 1]``."""
    counts = []
    for part in value.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if match is None:
            raise ValueError(f"SLURM_TASKS_PER_NODE={value!r} is not of the form '2(x3),1'")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def slurm_first_host(nodelist: str) -> str:
    """The first host of a SLURM host list, e.g. ``"gpu[007-009,012],login1"`` -> ``"gpu007"``."""
    first = re.match(r"[^,\[]*(\[[^\]]*\][^,\[]*)*", nodelist.strip()).group(0)
    # Each bracket holds ranges such as "007-009,012": its first number, zero padding kept, names the first host.
    host = re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[-,]", m.group(1))[0], first)
    if not host:
        raise ValueError(f"cannot read a host name from the SLURM node list {nodelist!r}")
    return host


def _ints(environ, *names):
    try:
        return [int(environ[name]) for name in names]
    except ValueError as error:
        raise ValueError(f"{', '.join(names)} must be integers: {error}") from None


def _torchrun_env(environ) -> ClusterEnv:
    rank, world_size, local_rank = _ints(environ, "RANK", "WORLD_SIZE", "LOCAL_RANK")
    local_world_size = int(environ.get("LOCAL_WORLD_SIZE", world_size))
    node_rank = int(environ.get("GROUP_RANK", rank // local_world_size))
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in environ]
    if missing:
        raise ValueError(f"RANK and WORLD_SIZE are set but not {' and '.join(missing)}: start with torchrun")
    return ClusterEnv("torchrun", rank, world_size, local_rank, local_world_size, node_rank, "env://")


def _slurm_env(environ) -> ClusterEnv:
    # The job step's variables (set by srun), not the job's: a step may use part of the allocation.
    rank, world_size, local_rank, node_rank = _ints(
        environ, "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", "SLURM_NODEID"
    )
    if "SLURM_STEP_TASKS_PER_NODE" in environ:
        local_world_size = slurm_tasks_per_node(environ["SLURM_STEP_TASKS_PER_NODE"])[node_rank]
    elif "SLURM_NTASKS_PER_NODE" in environ:
        (local_world_size,) = _ints(environ, "SLURM_NTASKS_PER_NODE")
    else:
        local_world_size = slurm_tasks_per_node(environ["SLURM_TASKS_PER_NODE"])[node_rank]
    host = environ.get("MASTER_ADDR")
    if host is None:
        names = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
        nodelist = next((environ[name] for name in names if environ.get(name)), None)
        if not nodelist:
            raise ValueError("SLURM_JOB_NODELIST is not set: set MASTER_ADDR to the host of rank 0")
        host = slurm_first_host(nodelist)
    # Every task of the job derives the same port from the job id, unless MASTER_PORT says otherwise.
    port = int(environ.get("MASTER_PORT", 15000 + int(environ.get("SLURM_JOB_ID", 0)) % 20000))
    return ClusterEnv("slurm", rank, world_size, local_rank, local_world_size, node_rank, f"tcp://{host}:{port}")


def cluster_env(environ: Optional[Mapping[str, str]] = None) -> Optional[ClusterEnv]:
    """
    The job described by torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK,
    MASTER_ADDR, MASTER_PORT) or else by those of a SLURM job step started by srun (SLURM_PROCID,
    SLURM_STEP_NUM_TASKS, SLURM_LOCALID, SLURM_NODEID, SLURM_STEP_TASKS_PER_NODE or SLURM_NTASKS_PER_NODE or
    SLURM_TASKS_PER_NODE, SLURM_STEP_NODELIST or SLURM_JOB_NODELIST; MASTER_ADDR and MASTER_PORT override the first
    node and the port derived from SLURM_JOB_ID). None when neither describes more than one process, e.g. in a
    batch script, which SLURM runs as task 0 of SLURM_NTASKS but outside any job step.
    """
    environ = os.environ if environ is None else environ
    if "RANK" in environ and "WORLD_SIZE" in environ:
        env = _torchrun_env(environ)
    elif "SLURM_PROCID" in environ and "SLURM_STEP_NUM_TASKS" in environ:
        env = _slurm_env(environ)
    else:
        return None
    if env.world_size <= 1:
        return None
    if not 0 <= env.rank < env.world_size or not 0 <= env.local_rank < env.local_world_size:
        raise ValueError(f"inconsistent {env.launcher} environment: {env}")
    return env


def _init_process_group(env: ClusterEnv, timeout):
    """
    Join the job's process group (gloo for CPU tensors, nccl for CUDA ones) and give detectron2's ``comm`` the
    group of the processes on this node, as detectron2's ``launch`` does for the processes it spawns.
    """
    on_cuda = torch.cuda.is_available()
    # One GPU per local rank; a launcher that shows each process only its own GPU leaves that one current.
    if on_cuda and torch.cuda.device_count() > 1:
        if env.local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"local rank {env.local_rank} but only {torch.cuda.device_count()} GPUs visible: start at most one "
                "process per GPU on each node"
            )
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(
        "cpu:gloo,cuda:nccl" if on_cuda else "gloo",
        init_method=env.init_method,
        world_size=env.world_size,
        rank=env.rank,
        timeout=timeout,
    )
    node_of_rank = [None] * env.world_size
    dist.all_gather_object(node_of_rank, env.node_rank)
    # Every process creates every node's group, in the same order (new_group is collective).
    local_group = None
    for node in sorted(set(node_of_rank)):
        group = dist.new_group([r for r, n in enumerate(node_of_rank) if n == node])
        if node == env.node_rank:
            local_group = group
    # What comm.create_local_process_group sets, which supports only equal, contiguous blocks of ranks per node.
    comm._LOCAL_PROCESS_GROUP = local_group
    if (comm.get_local_rank(), comm.get_local_size()) != (env.local_rank, env.local_world_size):
        raise RuntimeError(
            f"rank {env.rank}: the {env.launcher} environment says local rank {env.local_rank} of "
            f"{env.local_world_size}, but the ranks on node {env.node_rank} make it {comm.get_local_rank()} of "
            f"{comm.get_local_size()}; check the launcher's node and task variables"
        )
    comm.synchronize()


def launch_job(main_func, args, timeout=DEFAULT_TIMEOUT):
    """
    Run ``main_func(args)`` in every process of the job, ``args`` being detectron2's command-line arguments.

    Under torchrun, or SLURM srun with several tasks, this process is one rank already: it joins the process
    group those launchers describe. Otherwise detectron2's ``launch`` starts ``--num-gpus`` processes on this
    machine, one of ``--num-machines`` meeting at ``--dist-url``. Under SLURM, ``--num-gpus`` or
    ``--num-machines`` above 1 select detectron2's way (one srun task per machine spawning its processes).
    """
    spawns = args.num_gpus > 1 or args.num_machines > 1
    env = cluster_env()
    if env is not None and env.launcher == "slurm" and spawns:
        env = None
    if env is not None and spawns:
        raise ValueError(
            f"torchrun already started {env.world_size} processes: drop --num-gpus/--num-machines (they would "
            "each spawn more), or start train_net.py with python instead of torchrun"
        )
    if env is None:
        return launch(
            main_func,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            timeout=timeout,
        )
    logger.info(f"{env.launcher}: rank {env.rank} of {env.world_size}, local rank {env.local_rank}")
    _init_process_group(env, timeout)
    result = main_func(args)
    dist.destroy_process_group()
    return result
