"""Hooks of the Trainer: stopping at the first non-finite loss, saving and stopping when the job is preempted."""
import logging
import os
import signal
import threading

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

logger = logging.getLogger(__name__)


class NonFiniteLossCheck(HookBase):
    """
    Raise ``FloatingPointError`` naming the loss terms and the iteration as soon as the model's forward pass
    returns a NaN or infinite loss. The check runs on the loss dict as it leaves the model, so neither backward
    nor the optimizer step sees it and the weights (and any checkpoint saved later) keep their last finite state.
    """

    def before_train(self):
        self._handle = self.trainer.model.register_forward_hook(self._check)

    def after_train(self):
        self._handle.remove()

    def _check(self, module, inputs, losses):
        if not module.training or not isinstance(losses, dict) or not losses:
            return
        finite = torch.stack([torch.isfinite(v.detach()).all() for v in losses.values()])
        if bool(finite.all()):  # one device sync per iteration
            return
        terms = zip(losses.items(), finite.tolist())
        bad = ", ".join(f"{name} = {value.float().sum().item()}" for (name, value), ok in terms if not ok)
        raise FloatingPointError(
            f"Non-finite loss at iteration {self.trainer.iter}: {bad}. Training stopped before the optimizer step, "
            "so the weights and the last checkpoint are the last finite ones. Lower SOLVER.BASE_LR, enable "
            "SOLVER.CLIP_GRADIENTS, or inspect this iteration's images and annotations; then resume with --resume."
        )


class TrainingPreempted(BaseException):
    """
    Raised by ``PreemptionCheckpoint`` to leave the training loop after saving. A ``BaseException``, so that
    detectron2's loop does not log it as a failure; hooks' ``after_train`` still run.
    """


# The PreemptionCheckpoints whose handlers are installed, outermost first: processes forked by this one (data-loader
# workers, the panoptic evaluation's process pool) get back the handlers that the outermost replaced. Per forking
# thread, the signal mask to restore after the fork.
_active_hooks = []
_mask_before_fork = threading.local()


def _block_signals_before_fork():
    """
    Keep the preemption signals blocked across a fork until the child has its handlers back. A parent may stop a
    child with SIGTERM before the child's interpreter finished forking (the evaluation's pool does, when it is
    collected right after its tasks), and Python drops a signal that its handler caught then: the child would wait
    forever, and its parent with it. Blocked, the signal waits in the kernel for the restored handler.
    """
    if _active_hooks:
        _mask_before_fork.saved = signal.pthread_sigmask(signal.SIG_BLOCK, PreemptionCheckpoint.SIGNALS)


def _unblock_signals_in_parent():
    saved = getattr(_mask_before_fork, "saved", None)
    if saved is not None:
        _mask_before_fork.saved = None
        signal.pthread_sigmask(signal.SIG_SETMASK, saved)


def _restore_handlers_in_child():
    saved = getattr(_mask_before_fork, "saved", None)
    if saved is None:
        return
    for signum, handler in _active_hooks[0]._previous_handlers.items():
        signal.signal(signum, handler)
    _active_hooks.clear()
    _mask_before_fork.saved = None
    signal.pthread_sigmask(signal.SIG_SETMASK, saved)


os.register_at_fork(
    before=_block_signals_before_fork,
    after_in_parent=_unblock_signals_in_parent,
    after_in_child=_restore_handlers_in_child,
)


class PreemptionCheckpoint(HookBase):
    """
    Save a checkpoint and stop at the next iteration boundary after SIGTERM or SIGUSR1, the signals schedulers
    (SLURM, Kubernetes, torchrun) send before they preempt a job; ``--resume`` continues from that checkpoint.

    The signal may reach only some processes of a distributed run: after every iteration the ranks take the
    maximum of their flags (one tiny all-reduce over a gloo group), so all of them stop after the same iteration.
    Processes forked during training get the previous handlers back, so that their parents can still stop them.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self._requested = False
        self._previous_handlers = {}
        self._group = None

    def before_train(self):
        if threading.current_thread() is not threading.main_thread():
            logger.warning("Training runs outside the main thread: SIGTERM/SIGUSR1 will not save a checkpoint")
            return
        for signum in self.SIGNALS:
            previous = signal.signal(signum, self._request)
            # None: a handler installed outside Python, which cannot be put back; the child gets the default.
            self._previous_handlers[signum] = signal.SIG_DFL if previous is None else previous
        _active_hooks.append(self)
        if comm.get_world_size() > 1:
            # CPU tensors over gloo whatever the training backend, so that the check never touches the GPU stream.
            self._group = dist.new_group(backend="gloo")
        logger.info(
            f"Process {os.getpid()} (rank {comm.get_rank()}): on SIGTERM or SIGUSR1, training saves a checkpoint "
            "at the next iteration and stops"
        )

    def _request(self, signum, frame):
        self._requested = True

    def after_step(self):
        if self._group is not None:
            flag = torch.tensor([int(self._requested)])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
            stop = bool(flag.item())
        else:
            stop = self._requested
        if not stop or self.trainer.iter + 1 >= self.trainer.max_iter:
            return  # the last iteration saves model_final anyway
        iteration = self.trainer.iter
        self.trainer.checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
        comm.synchronize()
        logger.info(f"Preempted: saved a checkpoint after iteration {iteration}; continue with --resume")
        raise TrainingPreempted(iteration)

    def after_train(self):
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()
        if self in _active_hooks:
            _active_hooks.remove(self)
        if self._group is not None:
            dist.destroy_process_group(self._group)
            self._group = None
