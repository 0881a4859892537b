"""
Training survives being killed: SIGKILL after the first checkpoint and in the middle of a later checkpoint write
leaves a loadable last checkpoint, ``--resume`` continues from it with the saved state and reaches MAX_ITER.
SIGTERM or SIGUSR1 (preemption) saves a checkpoint at the next iteration and exits cleanly.
A non-finite loss stops training before it reaches the weights, naming the loss term and the iteration.
"""
import copy
import math
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from detectron2.engine import HookBase, SimpleTrainer
from torch import nn

from conftest import R50, ROOT, TINY_MODEL, assert_same_state, make_cfg, split_overrides
from mask2former.checkpoint import SafeCheckpointer
from mask2former.toy import generate_toy_panoptic, register_toy_panoptic
from mask2former.engine import NonFiniteLossCheck, PreemptionCheckpoint, Trainer, TrainingPreempted


class TwoLosses(nn.Module):
    """A model whose ``loss_mask`` term turns into ``bad_value`` at iteration ``bad_iter``."""

    def __init__(self, bad_iter, bad_value):
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.bad_iter, self.bad_value, self.iter = bad_iter, bad_value, 0

    def forward(self, x):
        out = self.linear(x).mean()
        loss_mask = out.abs() * self.bad_value if self.iter == self.bad_iter else out.abs()
        self.iter += 1
        return {"loss_ce": out.square(), "loss_mask": loss_mask}


class Snapshot(HookBase):
    """Keeps the weights as they were before the current step."""

    def before_step(self):
        self.weights = copy.deepcopy(self.trainer.model.state_dict())


@pytest.mark.parametrize("bad_value", [math.nan, math.inf])
def test_non_finite_loss_stops_before_the_optimizer_step(bad_value):
    torch.manual_seed(0)
    model = TwoLosses(bad_iter=3, bad_value=bad_value)
    trainer = SimpleTrainer(model, [torch.randn(4, 3)] * 10, torch.optim.SGD(model.parameters(), lr=0.1))
    snapshot = Snapshot()
    trainer.register_hooks([NonFiniteLossCheck(), snapshot])
    with pytest.raises(FloatingPointError, match=f"iteration 3: loss_mask = {bad_value}\\. ") as error:
        trainer.train(0, 10)
    assert "loss_ce" not in str(error.value)
    assert trainer.iter == 3
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshot.weights[key]), key
    assert not model._forward_hooks, "the check must unhook itself when training ends"


def test_finite_losses_and_eval_outputs_pass():
    model = TwoLosses(bad_iter=-1, bad_value=math.nan)
    trainer = SimpleTrainer(model, [torch.randn(4, 3)] * 3, torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.register_hooks([NonFiniteLossCheck()])
    trainer.train(0, 3)
    assert trainer.iter == 3


class SignalAt(HookBase):
    """Sends ``signum`` to this process after iteration ``iteration``."""

    def __init__(self, signum, iteration):
        self.signum, self.iteration = signum, iteration

    def after_step(self):
        if self.trainer.iter == self.iteration:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signal_saves_and_stops_at_the_iteration_boundary(tmp_path, signum):
    model = TwoLosses(bad_iter=-1, bad_value=math.nan)
    trainer = SimpleTrainer(model, [torch.randn(4, 3)] * 10, torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.checkpointer = SafeCheckpointer(model, str(tmp_path))
    handler_before = signal.getsignal(signum)
    snapshot = Snapshot()
    # The signal arrives in the middle of iteration 3's hooks: the checkpoint holds iteration 3's weights.
    trainer.register_hooks([SignalAt(signum, 3), PreemptionCheckpoint(), snapshot])
    with pytest.raises(TrainingPreempted):
        trainer.train(0, 10)
    assert trainer.iter == 3
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    saved = torch.load(tmp_path / "model_0000003.pth", weights_only=True)
    assert saved["iteration"] == 3
    assert_same_state(saved["model"], model.state_dict())
    assert not all(torch.equal(v, snapshot.weights[k]) for k, v in model.state_dict().items())
    assert signal.getsignal(signum) == handler_before, "the hook must restore the previous handler"


def _report_handlers_then_sleep(pipe):
    pipe.send([signal.getsignal(signum) for signum in PreemptionCheckpoint.SIGNALS])
    time.sleep(60)


def _sleep():
    time.sleep(60)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_processes_forked_during_training_still_stop_on_the_signal(signum):
    # The panoptic evaluation's process pool and the data-loader workers are forked while the hook is active, and
    # their parents stop them with SIGTERM: a child that caught it would never exit and its parent would wait forever.
    # The pool stops its workers as soon as its tasks are done, possibly before a worker's interpreter has finished
    # forking, when Python drops a signal that a Python handler caught: so the signal also goes out at once.
    hook = PreemptionCheckpoint()
    hook.before_train()
    context = multiprocessing.get_context("fork")
    children = []
    try:
        receiver, sender = context.Pipe(duplex=False)
        running = context.Process(target=_report_handlers_then_sleep, args=(sender,))
        children.append(running)
        running.start()
        assert receiver.poll(timeout=20)
        assert receiver.recv() == [signal.SIG_DFL, signal.SIG_DFL], "the child must get the handlers back"
        os.kill(running.pid, signum)
        running.join(timeout=20)
        assert running.exitcode == -signum, "the forked child caught the signal instead of stopping"
        for _ in range(10):
            child = context.Process(target=_sleep)
            children.append(child)
            child.start()
            os.kill(child.pid, signum)
            child.join(timeout=20)
            assert child.exitcode == -signum, "a signal sent while the child was being forked was lost"
        assert signal.getsignal(signum) == hook._request, "the parent keeps the hook's handler"
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join()
        hook.after_train()
    assert signal.getsignal(signum) == signal.SIG_DFL


# ---------------------------------------------------------------------------------------------------------------
# SIGKILL, SIGTERM and --resume with the real train_net.py on CPU

MAX_ITER = 8
TINY = [
    *TINY_MODEL,
    "MODEL.MASK_FORMER.DEC_LAYERS 3",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES 8",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS 64",
    "DATASETS.TEST ()",
    "DATALOADER.NUM_WORKERS 0",
    "INPUT.IMAGE_SIZE 64",
    "SOLVER.IMS_PER_BATCH 1",
    f"SOLVER.MAX_ITER {MAX_ITER}",
    "SOLVER.CHECKPOINT_PERIOD 2",
    "SOLVER.WARMUP_ITERS 4",
    "TEST.EVAL_PERIOD 0",
    "SEED 7",
]

# Runs train_net.py, but SIGKILLs itself half-way through writing the first checkpoint file of this process.
KILLED_WHILE_SAVING = """
import io, os, runpy, signal, sys, torch
real_save = torch.save
def save_half_then_die(obj, f):
    if ".pth" in getattr(f, "name", ""):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: buffer.tell() // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(obj, f)
torch.save = save_half_then_die
sys.argv = ["train_net.py"] + sys.argv[1:]
runpy.run_path("train_net.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    datasets = tmp_path_factory.mktemp("datasets")
    generate_toy_panoptic(str(datasets / "toy_panoptic"), num_train=2, num_val=1, seed=0)
    return datasets


def _train_net(toy_root, out, *extra, script=("train_net.py",)):
    """Start train_net.py on the toy dataset in a subprocess; its output goes to ``out/stdout.txt``."""
    env = {**os.environ, "DETECTRON2_DATASETS": str(toy_root), "OMP_NUM_THREADS": "1"}
    overrides = TINY + [f"OUTPUT_DIR {out}", "DATASETS.TRAIN ('toy_panoptic_train_panoptic',)"]
    command = [sys.executable, *script, "--config-file", str(R50), *extra, *split_overrides(overrides)]
    log = open(out / "stdout.txt", "a")
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait(process, timeout=240):
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def _last_checkpoint(out):
    return (out / "last_checkpoint").read_text()


def _assert_every_checkpoint_loads(out):
    for path in out.glob("*.pth"):
        state = torch.load(path, weights_only=True)
        assert {"model", "trainer", "iteration"} <= state.keys(), path


def test_sigkill_after_first_checkpoint_and_during_a_save_then_resume(toy_root, tmp_path):
    out = tmp_path / "out"
    out.mkdir()

    # 1. SIGKILL from outside as soon as the first checkpoint has been tagged.
    process = _train_net(toy_root, out)
    deadline = time.monotonic() + 240
    while not (out / "last_checkpoint").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert _wait(process) == -signal.SIGKILL, (out / "stdout.txt").read_text()[-3000:]
    first = _last_checkpoint(out)
    assert first == "model_0000001.pth"
    _assert_every_checkpoint_loads(out)

    # 2. --resume, killed half-way through writing its first checkpoint (model_0000003.pth).
    process = _train_net(toy_root, out, "--resume", script=("-c", KILLED_WHILE_SAVING))
    assert _wait(process) == -signal.SIGKILL, (out / "stdout.txt").read_text()[-3000:]
    partial = out / "model_0000003.pth.tmp"
    assert partial.exists() and partial.stat().st_size > 0
    assert not (out / "model_0000003.pth").exists()
    assert _last_checkpoint(out) == first
    _assert_every_checkpoint_loads(out)

    # 3. What --resume restores is exactly what was saved.
    saved = torch.load(out / first, weights_only=True)
    trainer = _resumed_trainer(toy_root, out)
    assert trainer.start_iter == saved["iteration"] + 1 == 2
    assert_same_state(trainer.model.state_dict(), saved["model"])
    assert_same_state(trainer.optimizer.state_dict(), saved["trainer"]["_trainer"]["optimizer"])
    assert_same_state(trainer.scheduler.state_dict(), saved["trainer"]["hooks"]["LRScheduler"])
    assert isinstance(trainer.checkpointer, SafeCheckpointer)
    assert any(isinstance(h, NonFiniteLossCheck) for h in trainer._hooks)
    del trainer

    # 4. --resume again: continues at iteration 2 and reaches MAX_ITER.
    process = _train_net(toy_root, out, "--resume")
    log = (out / "stdout.txt").read_text()
    assert _wait(process) == 0, log[-3000:]
    log = (out / "stdout.txt").read_text()
    assert log.count("Starting training from iteration 0") == 1
    assert log.count("Starting training from iteration 2") == 2  # the killed resume and this one
    assert _last_checkpoint(out) == "model_final.pth"
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == final["trainer"]["iteration"] == MAX_ITER - 1
    assert not list(out.glob("*.tmp"))
    _assert_every_checkpoint_loads(out)


def _resumed_trainer(toy_root, out):
    register_toy_panoptic(str(toy_root / "toy_panoptic"), name="crash_resume_toy")
    overrides = TINY + [f"OUTPUT_DIR {out}", "DATASETS.TRAIN ('crash_resume_toy_train_panoptic',)"]
    trainer = Trainer(make_cfg(R50, overrides))
    trainer.resume_or_load(resume=True)
    return trainer


def test_sigterm_saves_exits_cleanly_then_resume_reaches_max_iter(toy_root, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    process = _train_net(toy_root, out)
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        if "on SIGTERM or SIGUSR1, training saves a checkpoint" in (out / "stdout.txt").read_text():
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert _wait(process) == 0, (out / "stdout.txt").read_text()[-3000:]
    log = (out / "stdout.txt").read_text()
    (iteration,) = [int(i) for i in re.findall(r"Preempted: saved a checkpoint after iteration (\d+)", log)]
    assert iteration < MAX_ITER - 1
    assert _last_checkpoint(out) == f"model_{iteration:07d}.pth"
    assert not (out / "model_final.pth").exists()
    _assert_every_checkpoint_loads(out)

    process = _train_net(toy_root, out, "--resume")
    assert _wait(process) == 0, (out / "stdout.txt").read_text()[-3000:]
    assert f"Starting training from iteration {iteration + 1}" in (out / "stdout.txt").read_text()
    assert _last_checkpoint(out) == "model_final.pth"
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == MAX_ITER - 1
