"""
Cluster launchers: the ranks that torchrun and SLURM describe in their environment variables, and train_net.py
under two torchrun "nodes" on loopback (gloo on the CPU), preempted by a signal that reaches one rank only, then
resumed to MAX_ITER.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import R50, ROOT, TINY_MODEL, split_overrides
from mask2former.engine.launch import ClusterEnv, cluster_env, launch_job, slurm_first_host, slurm_tasks_per_node
from mask2former.toy import generate_toy_panoptic


@pytest.mark.parametrize(
    "value, counts",
    [("4", [4]), ("2(x3)", [2, 2, 2]), ("2(x3),1", [2, 2, 2, 1]), ("1,3(x2),2", [1, 3, 3, 2])],
)
def test_slurm_tasks_per_node(value, counts):
    assert slurm_tasks_per_node(value) == counts


def test_slurm_tasks_per_node_rejects_garbage():
    with pytest.raises(ValueError, match="SLURM_TASKS_PER_NODE='2x3'"):
        slurm_tasks_per_node("2x3")


@pytest.mark.parametrize(
    "nodelist, host",
    [
        ("node17", "node17"),
        ("node17,node3", "node17"),
        ("gpu[007-009,012],login1", "gpu007"),
        ("gpu[12,3-4]", "gpu12"),
        ("rack[2-3]-n[05-06].cluster", "rack2-n05.cluster"),
    ],
)
def test_slurm_first_host(nodelist, host):
    assert slurm_first_host(nodelist) == host


# Task 5 of a 7-task job step (srun) in a job of 8 tasks on 4 nodes.
SLURM = {
    "SLURM_PROCID": "5",
    "SLURM_NTASKS": "8",
    "SLURM_STEP_NUM_TASKS": "7",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "2",
    "SLURM_TASKS_PER_NODE": "2(x4)",
    "SLURM_STEP_TASKS_PER_NODE": "2(x3),1",
    "SLURM_JOB_NODELIST": "gpu[007-009,012]",
    "SLURM_JOB_ID": "123456",
}


def test_slurm_environment():
    assert cluster_env(SLURM) == ClusterEnv(
        "slurm", rank=5, world_size=7, local_rank=1, local_world_size=2, node_rank=2,
        init_method=f"tcp://gpu007:{15000 + 123456 % 20000}",
    )
    # Without the step's layout: --ntasks-per-node, else the job's; an explicit master address and port.
    job_layout = {k: v for k, v in SLURM.items() if k != "SLURM_STEP_TASKS_PER_NODE"}
    env = cluster_env({**job_layout, "SLURM_NTASKS_PER_NODE": "3", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "2950"})
    assert (env.local_world_size, env.init_method) == (3, "tcp://10.0.0.1:2950")
    assert cluster_env(job_layout).local_world_size == 2
    # One task, or the batch script (task 0 of SLURM_NTASKS but no job step): nothing to join.
    assert cluster_env({**SLURM, "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}) is None
    assert cluster_env({k: v for k, v in SLURM.items() if not k.startswith("SLURM_STEP")}) is None
    with pytest.raises(ValueError, match="inconsistent slurm environment"):
        cluster_env({**SLURM, "SLURM_PROCID": "7"})
    with pytest.raises(ValueError, match="set MASTER_ADDR"):
        cluster_env({k: v for k, v in SLURM.items() if k != "SLURM_JOB_NODELIST"})


TORCHRUN = {
    "RANK": "3",
    "WORLD_SIZE": "4",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "GROUP_RANK": "1",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
}


def test_torchrun_environment_wins_over_slurm():
    expected = ClusterEnv("torchrun", 3, 4, 1, 2, 1, "env://")
    assert cluster_env(TORCHRUN) == expected
    assert cluster_env({**SLURM, **TORCHRUN}) == expected  # torchrun started inside a SLURM job
    assert cluster_env({}) is None
    with pytest.raises(ValueError, match="not MASTER_PORT"):
        cluster_env({k: v for k, v in TORCHRUN.items() if k != "MASTER_PORT"})
    with pytest.raises(ValueError, match="must be integers"):
        cluster_env({**TORCHRUN, "RANK": "three"})


def test_torchrun_with_num_gpus_is_explained(monkeypatch):
    for key, value in TORCHRUN.items():
        monkeypatch.setenv(key, value)
    args = type("Args", (), {"num_gpus": 2, "num_machines": 1, "machine_rank": 0, "dist_url": "auto"})()
    with pytest.raises(ValueError, match="drop --num-gpus"):
        launch_job(lambda args: None, args)


# ---------------------------------------------------------------------------------------------------------------
# train_net.py under torchrun: two nodes of one process each on 127.0.0.1

MAX_ITER = 6
TINY = [
    *TINY_MODEL,
    "MODEL.MASK_FORMER.DEC_LAYERS 3",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES 8",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS 64",
    "DATASETS.TRAIN ('toy_panoptic_train_panoptic',)",
    "DATASETS.TEST ()",
    "DATALOADER.NUM_WORKERS 0",
    "INPUT.IMAGE_SIZE 64",
    "SOLVER.IMS_PER_BATCH 2",
    f"SOLVER.MAX_ITER {MAX_ITER}",
    "SOLVER.CHECKPOINT_PERIOD 1000",
    "TEST.EVAL_PERIOD 0",
]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_train_net(datasets, out, *extra):
    """Two torchrun agents (nodes 0 and 1, one train_net.py process each), meeting on a free loopback port."""
    port = _free_port()
    env = {**os.environ, "DETECTRON2_DATASETS": str(datasets), "OMP_NUM_THREADS": "1"}
    for key in [k for k in env if k.startswith("SLURM_")]:
        del env[key]
    overrides = split_overrides(TINY + [f"OUTPUT_DIR {out}"])
    return [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node)]
            + ["--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port)]
            + ["train_net.py", "--config-file", str(R50), *extra, *overrides],
            cwd=ROOT,
            env=env,
            stdout=open(out / f"node{node}.txt", "a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so that a hung run is stopped with its workers
        )
        for node in range(2)
    ]


def _wait_all(agents, out, timeout=400):
    deadline = time.monotonic() + timeout
    try:
        return [agent.wait(timeout=max(1, deadline - time.monotonic())) for agent in agents]
    except subprocess.TimeoutExpired:
        for agent in agents:
            os.killpg(agent.pid, signal.SIGKILL)
        pytest.fail(f"torchrun did not finish within {timeout} s:\n" + _logs(out))


def _logs(out):
    return "\n".join(f"== {p.name}\n{p.read_text()[-2000:]}" for p in sorted(out.glob("node*.txt")))


def test_torchrun_two_nodes_preempted_on_one_rank_then_resumed(tmp_path):
    datasets = tmp_path / "datasets"
    generate_toy_panoptic(str(datasets / "toy_panoptic"), num_train=4, num_val=1, seed=0)
    out = tmp_path / "out"
    out.mkdir()

    agents = _torchrun_train_net(datasets, out)
    # Rank 1 (log.txt.rank1) says when its signal handlers are in place, and its process id.
    rank1_log = out / "log.txt.rank1"
    ready = re.compile(r"Process (\d+) \(rank 1\): on SIGTERM or SIGUSR1")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and all(a.poll() is None for a in agents):
        match = ready.search(rank1_log.read_text()) if rank1_log.exists() else None
        if match:
            break
        time.sleep(0.05)
    assert match, "rank 1 never installed its handlers:\n" + _logs(out)
    os.kill(int(match.group(1)), signal.SIGUSR1)
    assert _wait_all(agents, out) == [0, 0], _logs(out)

    # Both ranks stopped after the same iteration; rank 0, which got no signal, saved the checkpoint.
    stopped = re.compile(r"Preempted: saved a checkpoint after iteration (\d+)")
    iterations = [stopped.findall((out / name).read_text()) for name in ("log.txt", "log.txt.rank1")]
    assert len(iterations[0]) == 1 and iterations[0] == iterations[1], iterations
    iteration = int(iterations[0][0])
    assert iteration < MAX_ITER - 1
    checkpoint = f"model_{iteration:07d}.pth"
    assert (out / "last_checkpoint").read_text() == checkpoint
    assert torch.load(out / checkpoint, weights_only=True)["iteration"] == iteration
    assert not (out / "model_final.pth").exists()

    # --resume under torchrun continues after that iteration and reaches MAX_ITER.
    agents = _torchrun_train_net(datasets, out, "--resume")
    assert _wait_all(agents, out) == [0, 0], _logs(out)
    log = (out / "log.txt").read_text()
    assert f"Starting training from iteration {iteration + 1}" in log
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == MAX_ITER - 1
