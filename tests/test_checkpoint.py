"""
SafeCheckpointer: pickles cannot run code, released and converted formats still load, md5-named files are
verified, URLs are downloaded once into the cache, saves are atomic, and everything a trainer saves loads back
with ``weights_only=True``.
"""
import collections
import hashlib
import http.server
import os
import pickle
import re
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import AMPTrainer, SimpleTrainer, hooks
from detectron2.solver import build_lr_scheduler
from torch import nn

from conftest import FIXTURES, ROOT, assert_same_state
from mask2former.checkpoint import (
    CorruptCheckpointError,
    SafeCheckpointer,
    UnsafeCheckpointError,
    load_restricted_pickle,
)

REF = FIXTURES / "reference_tiny"


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, images):
        return {"loss": self.head(self.norm(self.conv(images)).mean((2, 3))).square().mean()}


def numpy_weights(seed=0):
    """Weights of :class:`Net` as numpy arrays, in the OrderedDict-with-_metadata form of a state_dict."""
    state = Net().state_dict()
    rng = np.random.default_rng(seed)
    weights = collections.OrderedDict(
        (k, rng.standard_normal(v.shape).astype(np.float32) if v.is_floating_point() else v.numpy())
        for k, v in state.items()
    )
    weights._metadata = state._metadata
    return weights


def assert_loaded(model, weights):
    state = model.state_dict()
    for key, value in weights.items():
        assert torch.equal(state[key], torch.as_tensor(value)), key


def write_pickle(path, obj, protocol=pickle.DEFAULT_PROTOCOL):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def md5_named(path):
    """Rename ``x.ext`` to ``x_<first 6 hex of its md5>.ext``, as the model zoo names its files."""
    digest = hashlib.md5(path.read_bytes()).hexdigest()[:6]
    return path.rename(path.with_name(f"{path.stem}_{digest}{path.suffix}"))


def flip_last_weight_byte(path):
    """Change one byte inside the last array's data: the file still unpickles, with a different weight."""
    data = bytearray(path.read_bytes())
    index = data.rindex(np.float32(numpy_weights()["head.bias"][-1]).tobytes())
    data[index] ^= 0x01
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------------------------
# Pickles that would run code


class RunsCommand:
    """Unpickling it calls ``func(*args)``: the classic pickle attack."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _attacks(marker):
    command = f"touch {marker}"
    return {
        "os.system": (RunsCommand(os.system, command), "posix.system"),
        "subprocess": (RunsCommand(subprocess.check_call, ["touch", str(marker)]), "subprocess.check_call"),
        "exec": (RunsCommand(exec, f"open({str(marker)!r}, 'w').close()"), "builtins.exec"),
    }


@pytest.mark.parametrize("attack", ["os.system", "subprocess", "exec"])
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_pickle_that_runs_a_command_is_refused_and_never_runs(tmp_path, attack, protocol):
    marker = tmp_path / "pwned"
    payload, global_name = _attacks(marker)[attack]
    # The payload sits after valid weights, so the unpickler has already built arrays when it meets the global.
    checkpoint = {"model": numpy_weights(), "__author__": "attacker", "matching_heuristics": False, "x": payload}
    path = write_pickle(tmp_path / "model.pkl", checkpoint, protocol)
    with pytest.raises(UnsafeCheckpointError, match=re.escape(f"the global '{global_name}'")):
        SafeCheckpointer(Net()).load(str(path))
    assert not marker.exists()
    # Sanity check of the attack itself: plain pickle does run it.
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_pth_that_runs_a_command_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pth"
    torch.save({"model": Net().state_dict(), "extra": RunsCommand(os.system, f"touch {marker}")}, path)
    with pytest.raises(UnsafeCheckpointError, match=re.escape("'posix.system'")):
        SafeCheckpointer(Net()).load(str(path))
    assert not marker.exists()


def test_pickle_with_persistent_ids_is_refused(tmp_path):
    # torch.save's legacy format uses persistent ids; a restricted unpickler must not resolve them either.
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage" if isinstance(obj, np.ndarray) else None

    path = tmp_path / "model.pkl"
    with open(path, "wb") as f:
        Pickler(f).dump({"model": numpy_weights(), "__author__": "x"})
    with pytest.raises(UnsafeCheckpointError, match="persistent ids"):
        SafeCheckpointer(Net()).load(str(path))


# ---------------------------------------------------------------------------------------------------------------
# Formats that must keep loading


@pytest.mark.parametrize("name", ["tiny_r50", "tiny_swin"])
def test_released_zoo_pickle_reads_exactly_as_pickle_does(name):
    path = REF / f"{name}.pkl"
    with open(path, "rb") as f:
        expected = pickle.load(f)  # trusted fixture
    loaded = load_restricted_pickle(path)
    assert loaded.keys() == expected.keys()
    assert loaded["__author__"] == expected["__author__"]
    assert loaded["matching_heuristics"] == expected["matching_heuristics"]
    weights, reference = loaded["model"], expected["model"]
    assert type(weights) is collections.OrderedDict
    assert list(weights) == list(reference)
    for key, value in reference.items():
        assert weights[key].dtype == value.dtype and np.array_equal(weights[key], value), key
    # The head decides the checkpoint layout from the module versions in _metadata.
    assert weights._metadata == reference._metadata
    assert weights._metadata["sem_seg_head"] == {"version": 2}


def _as_numpy1_pickle(obj, protocol):
    """The bytes numpy 1.x writes (``numpy.core.*``), as in the released zoo files and detectron2's conversions."""
    data = pickle.dumps(obj, protocol=protocol)
    assert b"numpy._core.multiarray\n" in data
    return data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


@pytest.mark.parametrize("protocol", [2, 3])
def test_zoo_format_written_by_numpy1_loads_with_metadata(tmp_path, protocol):
    weights = numpy_weights()
    checkpoint = {"model": weights, "__author__": "FAIR", "matching_heuristics": False}
    path = tmp_path / "model_final.pkl"
    path.write_bytes(_as_numpy1_pickle(checkpoint, protocol))
    model = Net()
    SafeCheckpointer(model).load(str(path))
    assert_loaded(model, weights)
    assert load_restricted_pickle(path)["model"]._metadata == weights._metadata


def test_detectron2_torchvision_conversion_loads_by_matching_heuristics(tmp_path):
    # tools/convert-torchvision-to-d2.py writes a plain dict of numpy arrays, named as in the bare backbone.
    weights = numpy_weights()
    checkpoint = {"model": dict(weights), "__author__": "torchvision", "matching_heuristics": True}
    path = write_pickle(tmp_path / "R-50.pkl", checkpoint)
    model = nn.Module()
    model.backbone = Net()
    SafeCheckpointer(model).load(str(path))
    assert_loaded(model.backbone, weights)


def test_caffe2_blobs_file_is_recognised(tmp_path):
    weights = dict(numpy_weights())
    blobs = {**weights, "conv.weight_momentum": np.zeros(1, np.float32)}
    path = tmp_path / "R-50.pkl"
    path.write_bytes(_as_numpy1_pickle({"blobs": blobs}, protocol=2))
    loaded = SafeCheckpointer(Net())._load_file(str(path))
    assert loaded["__author__"] == "Caffe2" and loaded["matching_heuristics"] is True
    assert sorted(loaded["model"]) == sorted(weights)


def test_numpy_scalars_and_protocol5_arrays_load(tmp_path):
    data = {"model": numpy_weights(), "__author__": "x", "matching_heuristics": False, "lr": np.float32(0.5)}
    path = write_pickle(tmp_path / "model.pkl", data, protocol=5)
    loaded = load_restricted_pickle(path)
    assert loaded["lr"] == np.float32(0.5) and loaded["lr"].dtype == np.float32
    assert np.array_equal(loaded["model"]["conv.weight"], data["model"]["conv.weight"])


# ---------------------------------------------------------------------------------------------------------------
# md5 check


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_md5_named_file_loads_and_changed_byte_is_rejected(tmp_path, suffix):
    weights = numpy_weights()
    path = tmp_path / f"model_final{suffix}"
    if suffix == ".pkl":
        write_pickle(path, {"model": weights, "__author__": "FAIR", "matching_heuristics": False})
    else:
        torch.save({"model": {k: torch.from_numpy(v) for k, v in weights.items()}}, path)
    path = md5_named(path)
    model = Net()
    SafeCheckpointer(model).load(str(path))
    assert_loaded(model, weights)

    expected = path.stem[-6:]
    flip_last_weight_byte(path)
    actual = hashlib.md5(path.read_bytes()).hexdigest()[:6]
    with pytest.raises(CorruptCheckpointError, match="corrupt or has been tampered") as error:
        SafeCheckpointer(Net()).load(str(path))
    assert f"'{expected}'" in str(error.value) and f"'{actual}'" in str(error.value)


def test_md5_check_can_be_turned_off_for_renamed_files(tmp_path, monkeypatch):
    weights = numpy_weights()
    path = write_pickle(tmp_path / "my_run_abc123.pkl", {"model": weights, "__author__": "me"})
    with pytest.raises(CorruptCheckpointError, match=r"MODEL.WEIGHTS_MD5_CHECK False \(or MASK2FORMER_MD5_CHECK=0\)"):
        SafeCheckpointer(Net()).load(str(path))
    model = Net()
    SafeCheckpointer(model, verify_md5=False).load(str(path))
    assert_loaded(model, weights)
    monkeypatch.setenv("MASK2FORMER_MD5_CHECK", "0")
    model = Net()
    SafeCheckpointer(model).load(str(path))
    assert_loaded(model, weights)


def test_names_without_md5_suffix_are_not_checked(tmp_path):
    # detectron2's own periodic checkpoints (model_0012345.pth, 7 digits) and plain names load unchecked.
    for name in ["model_0012345.pth", "model_final.pth", "weights.pkl"]:
        path = tmp_path / name
        if name.endswith(".pth"):
            torch.save({"model": Net().state_dict()}, path)
        else:
            write_pickle(path, {"model": numpy_weights(), "__author__": "me"})
        SafeCheckpointer(Net()).load(str(path))


# ---------------------------------------------------------------------------------------------------------------
# URL weights


class _Server:
    """A static file server on 127.0.0.1 that counts the requests it gets."""

    def __init__(self, root):
        self.requests = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def served(tmp_path, monkeypatch):
    root = tmp_path / "www" / "zoo"
    root.mkdir(parents=True)
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    server = _Server(root.parent)
    yield root, server
    server.close()


def test_url_weights_are_downloaded_once_verified_and_cached(tmp_path, served):
    root, server = served
    weights = numpy_weights(seed=3)
    path = md5_named(write_pickle(root / "model_final.pkl", {"model": weights, "__author__": "FAIR"}))
    url = f"{server.url}/zoo/{path.name}"
    for _ in range(2):
        model = Net()
        SafeCheckpointer(model).load(url)
        assert_loaded(model, weights)
    assert server.requests == [f"/zoo/{path.name}"]
    cached = tmp_path / "cache" / "zoo" / path.name
    assert cached.read_bytes() == path.read_bytes()


def test_tampered_url_weights_are_rejected_naming_url_and_cache(tmp_path, served):
    root, server = served
    path = md5_named(write_pickle(root / "model_final.pkl", {"model": numpy_weights(), "__author__": "FAIR"}))
    flip_last_weight_byte(path)
    url = f"{server.url}/zoo/{path.name}"
    with pytest.raises(CorruptCheckpointError, match="tampered") as error:
        SafeCheckpointer(Net()).load(url)
    assert url in str(error.value) and str(tmp_path / "cache" / "zoo" / path.name) in str(error.value)


# ---------------------------------------------------------------------------------------------------------------
# Saving


class _CPUAMPTrainer(AMPTrainer):
    """AMPTrainer's state (its GradScaler included) with SimpleTrainer's step: AMPTrainer.run_step needs CUDA."""

    run_step = SimpleTrainer.run_step


def _trainer(seed, init_scale):
    """A detectron2 trainer with every kind of state train_net saves: model, AdamW, LR schedule, AMP scaler."""

    torch.manual_seed(seed)
    model = Net()
    cfg = get_cfg()
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS = 10, 3
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99))
    scheduler = build_lr_scheduler(cfg, optimizer)
    data = [torch.randn(2, 3, 8, 8) for _ in range(3)]
    trainer = _CPUAMPTrainer(model, data, optimizer, grad_scaler=torch.amp.GradScaler("cpu", init_scale=init_scale))
    trainer.register_hooks([hooks.LRScheduler(optimizer, scheduler)])
    return trainer, model, optimizer, scheduler


def test_trainer_state_round_trips_with_weights_only(tmp_path):
    trainer, model, optimizer, scheduler = _trainer(seed=0, init_scale=256.0)
    trainer.train(0, 3)
    SafeCheckpointer(model, str(tmp_path), trainer=trainer).save("model_0000002")
    saved = torch.load(tmp_path / "model_0000002.pth", weights_only=True)
    assert saved["trainer"]["iteration"] == trainer.iter == 3
    assert saved["trainer"]["grad_scaler"]["scale"] == 256.0

    fresh, fresh_model, fresh_optimizer, fresh_scheduler = _trainer(seed=1, init_scale=1024.0)
    SafeCheckpointer(fresh_model, str(tmp_path), trainer=fresh).resume_or_load("", resume=True)
    assert fresh.iter == 3
    assert_same_state(fresh_model.state_dict(), model.state_dict())
    assert_same_state(fresh_optimizer.state_dict(), optimizer.state_dict())
    assert_same_state(fresh_scheduler.state_dict(), scheduler.state_dict())
    assert_same_state(fresh.grad_scaler.state_dict(), trainer.grad_scaler.state_dict())


def test_save_is_atomic_and_tags_last_checkpoint(tmp_path, monkeypatch):
    model = Net()
    checkpointer = SafeCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000000")
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
    good = (tmp_path / "model_0000000.pth").read_bytes()

    real_save = torch.save

    def dies_halfway(obj, f):
        real_save(obj, f)
        f.seek(f.tell() // 2)
        f.truncate()
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000000")
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000001")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000000.pth"]
    assert (tmp_path / "model_0000000.pth").read_bytes() == good
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000000.pth")
    SafeCheckpointer(Net()).load(checkpointer.get_checkpoint_file())


def test_killed_before_last_checkpoint_is_retagged_keeps_the_previous_tag(tmp_path, monkeypatch):
    from mask2former.checkpoint import atomic

    checkpointer = SafeCheckpointer(Net(), str(tmp_path))
    checkpointer.save("model_0000000")
    real_replace = os.replace

    def dies_before_tagging(src, dst):
        if str(dst).endswith("last_checkpoint"):
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", dies_before_tagging)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000001")
    monkeypatch.undo()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
    for name in ["model_0000000.pth", "model_0000001.pth"]:  # the new file is complete, merely not tagged yet
        SafeCheckpointer(Net()).load(str(tmp_path / name))


def test_state_that_weights_only_cannot_read_is_not_saved(tmp_path):
    class Unsafe:
        def state_dict(self):
            return {"when": Path("/tmp")}

    checkpointer = SafeCheckpointer(Net(), str(tmp_path), extra=Unsafe())
    with pytest.raises(TypeError, match="PosixPath"):
        checkpointer.save("model_0000000")
    assert os.listdir(tmp_path) == []


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.pkl"))):
        SafeCheckpointer(Net()).load(str(tmp_path / "nope.pkl"))


# ---------------------------------------------------------------------------------------------------------------
# Every checkpoint load in the project goes through SafeCheckpointer

# Plain pickle, a torch.load that may unpickle arbitrary objects, or a checkpointer other than ours. (The weight
# converters in tools/ read third-party state dicts with torch.load(weights_only=True), which is allowed.)
_UNSAFE_LOADS = re.compile(r"\b(pickle\.loads?\(|torch\.load\((?!.*weights_only=True)|(?<!Safe)(Detection)?Checkpointer\()")


def test_project_code_loads_checkpoints_only_through_safe_checkpointer():
    files = [ROOT / "train_net.py", *ROOT.glob("tools/*.py"), *ROOT.glob("demo/*.py")]
    files += ROOT.glob("mask2former/**/*.py")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        if path.is_file() and "checkpoint" not in path.relative_to(ROOT).parts[:2]
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if _UNSAFE_LOADS.search(line)
    ]
    assert not offenders, "load checkpoints with mask2former.checkpoint.SafeCheckpointer:\n" + "\n".join(offenders)
