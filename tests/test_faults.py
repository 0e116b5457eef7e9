"""Nothing lost, nothing locked, nothing obscure: one writer per workdir, unreadable files named in one
line, a full disk said in one line with nothing lost, and every option checked before any work."""
import errno
import gzip
import json
import logging
import os
import resource
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from score_toolkit import checkpoints, plotting, training
from score_toolkit.errors import WriteError
from score_toolkit.workdir_lock import WorkdirBusyError, WorkdirLock
from tests.helpers import MAIN, ROOT, assert_same_state, final_weights, small_config

SMALL = ["--config.model.hidden=32", "--config.data.n_train=2000", "--config.sampling.N=10",
         "--config.sampling.n_samples=50", "--config.sampling.batch_size=50", "--config.training.snapshot_freq=100000"]


def main(*args, **popen):
    return [sys.executable, MAIN, *args]


def run(*args, timeout=300, **kw):
    return subprocess.run(main(*args), capture_output=True, text=True, cwd=ROOT, timeout=timeout, **kw)


def one_line_error(proc, status=2):
    """The process failed with `status` and said why in one `error:` line (no traceback)."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == status, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and lines[-1].startswith("error: "), proc.stderr[-2000:]
    return lines[-1]


# ----- one writer per workdir ------------------------------------------------------------------------

HOLD = "import sys, time; from score_toolkit.workdir_lock import WorkdirLock; WorkdirLock(sys.argv[1]).acquire(); " \
       "print('held', flush=True); time.sleep(600)"


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, cwd=ROOT, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirBusyError, match=f"workdir {tmp_path} is in use by another run \\(pid {holder.pid}\\)"):
            WorkdirLock(str(tmp_path)).acquire()
        os.kill(holder.pid, signal.SIGKILL)  # kill -9: no handler runs, the kernel frees the lock
        holder.wait()
        with WorkdirLock(str(tmp_path)):
            with pytest.raises(WorkdirBusyError, match=f"pid {os.getpid()}"):
                WorkdirLock(str(tmp_path)).acquire()
    finally:
        holder.kill()


@pytest.mark.slow
def test_two_trainings_on_one_workdir_one_trains_the_other_writes_nothing(tmp_path):
    work = tmp_path / "w"
    first = subprocess.Popen(main("--mode", "train", "--workdir", str(work), "--config.training.n_iters=100000",
                                  "--config.training.checkpoint_freq=200", *SMALL),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        ckpt = work / "checkpoints"
        deadline = time.time() + 120
        while not (ckpt.is_dir() and os.listdir(ckpt)) and time.time() < deadline:
            time.sleep(0.05)
        second = run("--mode", "train", "--workdir", str(work), "--config.training.n_iters=100000",
                     "--config.training.checkpoint_freq=200", "--config.training.log_freq=77", *SMALL)
        line = one_line_error(second)
        assert f"workdir {work} is in use by another run (pid {first.pid})" in line
        assert "log_freq=77" not in (work / "log.txt").read_text()  # it wrote nothing, not even its log line
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        first.kill()
    # The holder's death freed the lock: the same command resumes.
    done = run("--mode", "train", "--workdir", str(work), "--config.training.n_iters=400",
               "--config.training.checkpoint_freq=200", *SMALL)
    assert done.returncode == 0, done.stderr[-2000:]
    assert final_weights(work)[0] >= 400


# ----- a full disk -----------------------------------------------------------------------------------

def _full_disk_at(step):
    """torch.save that fails as a full disk does at checkpoint `step`: half the bytes, then ENOSPC
    (wrapped in a RuntimeError, as torch's zip writer reports it)."""
    real = torch.save

    def save(obj, f):
        if obj.get("step") == step:
            f.write(b"PK\x03\x04 half a checkpoint")
            try:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError as e:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2679488") from e
        return real(obj, f)

    return save


def test_a_full_disk_during_a_checkpoint_loses_nothing_and_resumes_exactly(tmp_path, monkeypatch):
    c = small_config()
    training.train(c, str(tmp_path / "a"))
    monkeypatch.setattr(checkpoints.torch, "save", _full_disk_at(20))
    with pytest.raises(WriteError) as e:
        training.train(c, str(tmp_path / "b"))
    message = str(e.value)
    assert "\n" not in message and "No space left on device" in message and "checkpoint_20.pt" in message
    assert e.value.exit_code == 74
    left = sorted(os.listdir(tmp_path / "b" / "checkpoints"))
    assert left == ["checkpoint_10.pt"]  # no temporary file, the earlier checkpoint untouched
    assert checkpoints.load_latest(str(tmp_path / "b" / "checkpoints"))[0] == 10
    monkeypatch.undo()  # space freed
    training.train(c, str(tmp_path / "b"))
    assert_same_state(final_weights(tmp_path / "a")[1], final_weights(tmp_path / "b")[1])


def _file_size_limit(limit):
    def limit_writes():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_writes


@pytest.mark.slow
def test_the_command_line_says_a_failed_write_in_one_line_with_its_own_status(tmp_path):
    work = tmp_path / "w"
    args = ("--mode", "train", "--workdir", str(work), "--config.training.n_iters=40",
            "--config.training.checkpoint_freq=20", *SMALL)
    # Every file but a checkpoint fits under 20 kB; a checkpoint does not.
    failed = run(*args, preexec_fn=_file_size_limit(20_000))
    line = one_line_error(failed, status=74)
    assert "could not write the checkpoint of step 20" in line and "File too large" in line
    assert not [f for f in os.listdir(work / "checkpoints") if ".tmp-" in f]
    assert run(*args).returncode == 0  # the limit lifted, the same command finishes


def test_stale_temporary_files_are_removed(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / "checkpoints" / "checkpoint_20.pt.tmp-4242", tmp_path / "config.json.tmp-17"]
    for p in stale:
        p.write_bytes(b"half")
    (tmp_path / "checkpoints" / "checkpoint_10.pt").write_bytes(b"kept")
    assert sorted(checkpoints.remove_stale_temporaries(str(tmp_path))) == sorted(map(str, stale))
    assert os.listdir(tmp_path / "checkpoints") == ["checkpoint_10.pt"]


def test_checkpoints_are_never_overwritten_and_failures_keep_what_was_there(tmp_path):
    path = str(tmp_path / "checkpoint_5.pt")
    checkpoints.atomic_save({"w": torch.ones(2)}, path)
    with pytest.raises(FileExistsError, match="never overwritten"):
        checkpoints.atomic_save({"w": torch.zeros(2)}, path)
    assert torch.equal(checkpoints.load_checkpoint(path)["w"], torch.ones(2))


# ----- files read back name themselves ---------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("content, what", [("{not json", "is not the JSON config"),
                                           ("[1, 2]", "holds a JSON list, not the config object")])
def test_a_garbled_config_json_is_one_line(tmp_path, content, what):
    (tmp_path / "config.json").write_text(content)
    line = one_line_error(run("--mode", "train", "--workdir", str(tmp_path), "--config.training.n_iters=5"))
    assert f"{tmp_path / 'config.json'} {what}" in line
    assert sorted(os.listdir(tmp_path)) == ["config.json"]


def test_unreadable_torch_files_are_named(tmp_path):
    path = tmp_path / "weights.pt"
    checkpoints.atomic_save({"model": {"w": torch.ones(1000)}, "step": 3}, str(path))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match=f"{path} is not a readable torch file: it is truncated or corrupt"):
        checkpoints.load_file(str(path), ("model", "step"), "weights", "")


def _idx(path, array, magic):
    raw = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw))


@pytest.mark.slow
def test_a_truncated_idx_file_is_refused_before_the_workdir_exists(tmp_path):
    data = tmp_path / "fmnist"
    data.mkdir()
    _idx(data / "train-images-idx3-ubyte.gz", np.zeros((10, 28, 28), np.uint8), 2051)
    _idx(data / "train-labels-idx1-ubyte.gz", np.zeros(10, np.uint8), 2049)
    raw = gzip.decompress((data / "train-images-idx3-ubyte.gz").read_bytes())
    (data / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-100]))  # a short file, well-formed gzip
    work = tmp_path / "w"
    line = one_line_error(run("--mode", "train", "--config", "configs/fashionmnist_vp_ddpmpp.py", "--workdir", str(work),
                              f"--config.data.root={data}", "--config.device=cpu"))
    assert "train-images-idx3-ubyte.gz" in line and "truncated or corrupt" in line
    assert not work.exists()


@pytest.mark.slow
def test_weights_of_another_config_are_refused_and_a_second_export_is_done_already(tmp_path):
    work = tmp_path / "roll"
    assert run("--mode", "train", "--workdir", str(work), "--config.training.n_iters=20", *SMALL).returncode == 0
    first = run("--mode", "export", "--workdir", str(work), *SMALL)
    again = run("--mode", "export", "--workdir", str(work), *SMALL)
    assert first.returncode == again.returncode == 0, again.stderr
    assert "holds the EMA weights of step 20 already" in again.stderr
    weights = work / "export" / "ema_step20.pt"
    line = one_line_error(run("--mode", "sample", "--config", "configs/gmm_vp_mlp.py", "--workdir", str(tmp_path / "g"),
                              f"--config.eval.weights_path={weights}", "--config.model.hidden=32"))
    assert "holds weights of another config: config.data.name is 'swiss_roll' there, 'gmm' here" in line
    weights.write_bytes(weights.read_bytes()[:500])
    line = one_line_error(run("--mode", "sample", "--workdir", str(tmp_path / "s"), f"--config.eval.weights_path={weights}",
                              *SMALL))
    assert f"{weights} is not a readable torch file" in line


@pytest.mark.slow
def test_an_object_array_observation_is_one_line(tmp_path):
    obs = tmp_path / "obs.npz"
    np.savez(obs, samples=np.array([object(), object()], dtype=object))
    line = one_line_error(run("--mode", "sample", "--config", "configs/fashionmnist_vp_ddpmpp_pretrained.py",
                              "--workdir", str(tmp_path / "w"), "--config.sampling.task=inpaint",
                              f"--config.sampling.observed={obs}", "--config.device=cpu"))
    assert f"{obs}: not a readable .npz of uint8 images" in line
    assert not (tmp_path / "w").exists()


# ----- every option checked before work -------------------------------------------------------------

@pytest.mark.slow
def test_sampler_options_that_cannot_work_are_refused_before_any_folder(tmp_path):
    work = tmp_path / "w"
    assert run("--mode", "train", "--workdir", str(work), "--config.training.n_iters=10", *SMALL).returncode == 0
    for bad, key in ((["--config.sampling.method=ddim", "--config.sampling.eta=-1"], "sampling.eta"),
                     (["--config.sampling.method=heun", "--config.sampling.s_churn=-5"], "sampling.s_churn"),
                     (["--config.sampling.method=dpm_solver", "--config.sampling.order=5"], "sampling.order"),
                     (["--config.sampling.method=unipc", "--config.sampling.order=0"], "sampling.order"),
                     (["--config.sampling.method=ode", "--config.sampling.ode_method=rk4",
                       "--config.sampling.ode_steps=0"], "sampling.ode_steps"),
                     (["--config.sampling.predictor=none", "--config.sampling.corrector=none"], "sampling.predictor")):
        line = one_line_error(run("--mode", "sample", "--workdir", str(work), *SMALL, *bad))
        assert f"config.{key} = " in line and "is not allowed" in line, line
    assert not (work / "eval").exists()


@pytest.mark.slow
def test_a_batch_that_cannot_fit_memory_is_refused_before_anything_is_written(tmp_path):
    line = one_line_error(run("--mode", "train", "--workdir", str(tmp_path / "w"),
                              "--config.training.batch_size=1000000000"))
    assert "config.training.batch_size = 1000000000 is not allowed" in line and "free" in line
    assert not (tmp_path / "w").exists()


def test_a_workdir_without_a_checkpoint_takes_a_new_config(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    c = small_config()
    checkpoints.start_run(str(tmp_path), small_config(**{"optim.lr": 1e6}))  # a run that diverged at once
    checkpoints.check_run_config(str(tmp_path), c)  # not refused: nothing to protect
    checkpoints.start_run(str(tmp_path), c)
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["lr"] == c.optim.lr
    assert "had no checkpoint, so this run's config replaces it" in caplog.text


def test_the_loss_plot_smooths_short_runs_too():
    # The default run logs 30 points: a spike of one logged loss no longer shows in the median line.
    loss = np.linspace(1.0, 0.5, 30)
    loss[12] = 5.0
    smooth = plotting.moving_median(loss, plotting.smoothing_half_width(len(loss)))
    clean = np.linspace(1.0, 0.5, 30)
    assert abs(smooth[12] - clean[12]) < 0.03 and np.allclose(smooth[3:-3], clean[3:-3], atol=0.02)
    # Long runs keep ~1/100 of the points per side; tiny ones are left as they are.
    assert [plotting.smoothing_half_width(n) for n in (5, 10, 1000, 10_000)] == [0, 1, 10, 100]


def test_a_truncated_image_in_a_folder_data_set_is_named(tmp_path):
    from PIL import Image
    from score_toolkit import image_data
    path = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=f"{path}: not a readable image"):
        image_data.load_image(path, 16, 3)


def test_only_the_writer_moves_an_unreadable_checkpoint_aside_and_only_a_corrupt_one(tmp_path, monkeypatch):
    ck = tmp_path / "checkpoints"
    for step in (10, 20):
        checkpoints.save_checkpoint(str(ck), step, {"w": torch.full((100,), float(step))}, keep=3)
    newest = ck / "checkpoint_20.pt"
    newest.write_bytes(newest.read_bytes()[:200])
    step, state = checkpoints.load_latest(str(ck))  # a reader (eval, another rank): skips, moves nothing
    assert step == 10 and newest.exists()
    real = torch.load

    def unreadable(path, *a, **k):  # an I/O error: the file may be fine
        if str(path).endswith("checkpoint_20.pt"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(checkpoints.torch, "load", unreadable)
    assert checkpoints.load_latest(str(ck))[0] == 10 and newest.exists()  # a reader skips it
    # The writer stops: resuming before it would end at step 20, which is never written over.
    with pytest.raises(ValueError, match="checkpoint_20.pt could not be read \\(Permission denied\\); fix its access"):
        checkpoints.load_latest(str(ck), move_aside=True)
    assert newest.exists()
    monkeypatch.undo()
    assert checkpoints.load_latest(str(ck), move_aside=True)[0] == 10
    assert not newest.exists() and (ck / "checkpoint_20.pt.unreadable-1").exists()


def test_an_interrupted_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def interrupted(obj, f):
        f.write(b"PK half")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.atomic_save({"w": torch.ones(2)}, str(tmp_path / "c.pt"))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("overrides, key", [
    ({"sampling.method": "ddim", "sampling.eta": -1.0}, "sampling.eta"),
    ({"sampling.method": "heun", "sampling.steps": 1}, "sampling.steps"),
    ({"sampling.method": "dpm_solver", "sampling.steps": 2, "sampling.order": 2}, "sampling.steps"),
    ({"sampling.method": "ode", "sampling.ode_method": "rk4", "sampling.ode_steps": 0}, "sampling.ode_steps"),
    ({"sampling.predictor": "none", "sampling.corrector": "none"}, "sampling.predictor")])
def test_validation_runs_the_samplers_own_checks(overrides, key):
    from score_toolkit import validation
    from score_toolkit.errors import ConfigError
    with pytest.raises(ConfigError, match=f"config.{key} = .* is not allowed"):
        validation.validate_config(small_config(**overrides))


def test_a_batch_that_cannot_fit_is_refused_with_a_measured_estimate():
    from score_toolkit import memory
    from score_toolkit.errors import ConfigError
    import models
    net = models.get_model("mlp")(dim=2, hidden=64, num_layers=2)
    per_sample = memory.saved_bytes(net, (2,), 2) - memory.saved_bytes(net, (2,), 1)
    assert per_sample >= 4 * 64 * 2  # at least two 64-wide float32 activations a sample
    free = memory.free_bytes(torch.device("cpu"))
    if free is None:
        pytest.skip("this machine does not say how much memory is free")
    memory.check_batch_fits(net, (2,), 64, torch.device("cpu"), "training.batch_size")  # fits
    with pytest.raises(ConfigError, match="config.training.batch_size = .* is not allowed: a training step"):
        memory.check_batch_fits(net, (2,), 2 * free // per_sample + 1, torch.device("cpu"), "training.batch_size")
