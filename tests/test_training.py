"""Training, checkpoints and evaluation: resumable, atomic, safe, and stopped by bad values."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from score_toolkit import factories
from score_toolkit import checkpoints
from score_toolkit import evaluation
from score_toolkit import training
from tests.helpers import assert_same_state, final_weights, small_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_training_writes_everything_and_learns(tmp_path):
    c = small_config(**{"training.n_iters": 300, "training.checkpoint_freq": 100, "training.snapshot_freq": 300})
    training.train(c, str(tmp_path))
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert names == ["checkpoint_100.pt", "checkpoint_200.pt", "checkpoint_300.pt"]
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(10, 301, 10))
    assert rows[-1]["loss"] < 0.7 * rows[0]["loss"]
    assert (tmp_path / "samples" / "samples_300.png").stat().st_size > 1000
    assert (tmp_path / "loss.png").exists()
    state = torch.load(tmp_path / "checkpoints" / "checkpoint_300.pt", weights_only=True)
    assert json.loads(state["config"])["training"]["n_iters"] == 300


def test_keep_last_checkpoints(tmp_path):
    c = small_config(**{"training.n_iters": 50, "training.keep_checkpoints": 2})
    training.train(c, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["checkpoint_40.pt", "checkpoint_50.pt"]


def test_resume_in_process_equals_uninterrupted(tmp_path):
    c = small_config()
    training.train(c, str(tmp_path / "a"))
    training.train(c, str(tmp_path / "b"), max_steps=20)  # stops after the checkpoint at 20
    training.train(c, str(tmp_path / "b"))
    assert_same_state(final_weights(tmp_path / "a")[1], final_weights(tmp_path / "b")[1])
    steps = [json.loads(line)["step"] for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert steps == [10, 20, 30]


def _main(workdir, *extra):
    return [sys.executable, os.path.join(ROOT, "main.py"), "--mode", "train", "--workdir", str(workdir),
            "--config.training.n_iters=600", "--config.training.checkpoint_freq=100",
            "--config.training.snapshot_freq=100000", "--config.training.batch_size=64",
            "--config.model.hidden=32", "--config.data.n_train=2000", "--config.sampling.N=10",
            "--config.sampling.n_samples=50", "--config.sampling.batch_size=50", *extra]


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_same_weights(tmp_path):
    subprocess.run(_main(tmp_path / "full"), check=True, capture_output=True, cwd=ROOT)
    proc = subprocess.Popen(_main(tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    first = tmp_path / "killed" / "checkpoints" / "checkpoint_100.pt"
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = checkpoints.list_checkpoints(str(tmp_path / "killed" / "checkpoints"))
    assert left and left[0][0] < 600, "the kill came too late to test anything"
    subprocess.run(_main(tmp_path / "killed"), check=True, capture_output=True, cwd=ROOT)
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "killed")
    assert a[0] == b[0] == 600
    assert_same_state(a[1], b[1])


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_saves_the_step_in_progress(tmp_path, signum):
    """A signal between checkpoints loses nothing: the finished step is saved and resumes exactly."""
    cmd = lambda w: _main(w, "--config.training.log_freq=5")  # noqa: E731
    subprocess.run(cmd(tmp_path / "full"), check=True, capture_output=True, cwd=ROOT)
    proc = subprocess.Popen(cmd(tmp_path / "stopped"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    metrics = tmp_path / "stopped" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.stat().st_size) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    (step, _), = checkpoints.list_checkpoints(str(tmp_path / "stopped" / "checkpoints"))
    assert 0 < step < 100, "the signal came too late to test anything"
    assert f"training stopped after step {step}" in err.decode()
    subprocess.run(cmd(tmp_path / "stopped"), check=True, capture_output=True, cwd=ROOT)
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "stopped")
    assert a[0] == b[0] == 600
    assert_same_state(a[1], b[1])


def test_corrupt_newest_checkpoint_falls_back(tmp_path, caplog):
    c = small_config()
    training.train(c, str(tmp_path / "a"))
    training.train(c, str(tmp_path / "b"), max_steps=20)
    newest = tmp_path / "b" / "checkpoints" / "checkpoint_20.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a full disk
    state = training.resume_or_start(c, str(tmp_path / "b" / "checkpoints"))
    assert state.step == 10
    assert "unreadable" in caplog.text and "checkpoint_20.pt" in caplog.text
    # Moved aside, never deleted: the resumed run writes step 20 again and finishes as one that never stopped.
    assert not newest.exists() and (tmp_path / "b" / "checkpoints" / "checkpoint_20.pt.unreadable-1").exists()
    training.train(c, str(tmp_path / "b"))
    assert_same_state(final_weights(tmp_path / "a")[1], final_weights(tmp_path / "b")[1])


def test_crash_while_writing_loses_no_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "ck"
    checkpoints.save_checkpoint(str(ckpt), 10, {"w": torch.ones(3)}, keep=3)

    def dying_save(obj, f):
        f.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt  # the process dies mid-write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_checkpoint(str(ckpt), 20, {"w": torch.zeros(3)}, keep=3)
    monkeypatch.undo()
    assert [s for s, _ in checkpoints.list_checkpoints(str(ckpt))] == [10]
    step, state = checkpoints.load_latest(str(ckpt))
    assert step == 10 and torch.equal(state["w"], torch.ones(3))
    with pytest.raises(FileExistsError, match="never overwritten"):
        checkpoints.save_checkpoint(str(ckpt), 10, {"w": torch.zeros(3)}, keep=3)


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {_RunsCode.marker}",))


def test_checkpoint_with_code_is_refused_not_run(tmp_path):
    _RunsCode.marker = str(tmp_path / "pwned")
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    with open(ckpt / "checkpoint_5.pt", "wb") as f:
        torch.save({"model": _RunsCode()}, f)
    with pytest.raises(checkpoints.UnsafeCheckpointError, match="refusing to load .*checkpoint_5.pt"):
        checkpoints.load_latest(str(ckpt))
    assert not os.path.exists(_RunsCode.marker)


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    real = factories.build_loss

    def poisoned(config, sde):
        fn, calls = real(config, sde), [0]

        def loss_fn(score_fn, x, g, cond=None):
            calls[0] += 1
            loss = fn(score_fn, x, g, cond)
            return loss * float("nan") if calls[0] == 15 else loss

        return loss_fn

    monkeypatch.setattr(training.factories, "build_loss", poisoned)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 15.*checkpoint_10\.pt"):
        training.train(small_config(), str(tmp_path))
    assert [s for s, _ in checkpoints.list_checkpoints(str(tmp_path / "checkpoints"))] == [10]
    assert torch.isfinite(torch.load(tmp_path / "checkpoints" / "checkpoint_10.pt", weights_only=True)
                          ["model"]["out.weight"]).all()


@pytest.mark.slow
def test_eval_reports_and_resumes(tmp_path, monkeypatch, capsys):
    c = small_config(**{"data.name": "gmm", "training.n_iters": 200, "training.checkpoint_freq": 200})
    training.train(c, str(tmp_path))
    res = evaluation.evaluate(c, str(tmp_path))
    for key in ("heldout_loss", "nll_nats", "nll_bits_per_dim", "true_nll_nats", "nll_gap_nats",
                "sliced_wasserstein", "mmd_rbf"):
        assert math.isfinite(res[key]), key
    assert abs(res["nll_bits_per_dim"] - res["nll_nats"] / (2 * math.log(2))) < 1e-12
    assert res["nll_gap_nats"] > -0.1  # a model cannot beat the true density by much on held-out data
    assert "nll_bits_per_dim" in capsys.readouterr().out
    saved = json.load(open(tmp_path / "eval" / "results.json"))
    assert saved["checkpoint_step"] == 200
    # A kill after the first NLL batch: only the second is computed again, with the same result.
    log = tmp_path / "eval" / "nll_batches.jsonl"
    lines = log.read_text().splitlines()
    log.write_text(lines[0] + "\n" + lines[1][:10])  # the second line cut short
    calls = []
    from score_toolkit import data_lib
    real = data_lib.likelihood.log_likelihood
    monkeypatch.setattr(data_lib.likelihood, "log_likelihood", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = evaluation.evaluate(c, str(tmp_path))
    assert len(calls) == 1 and again["nll_nats"] == pytest.approx(res["nll_nats"], rel=1e-12)
    assert again["sliced_wasserstein"] == res["sliced_wasserstein"]  # sample batches were kept


@pytest.mark.slow
def test_sample_mode_writes_npz_and_png(tmp_path):
    c = small_config(**{"sampling.method": "ode", "sampling.n_samples": 64, "sampling.batch_size": 32})
    training.train(c, str(tmp_path))
    folder = evaluation.sample(c, str(tmp_path))
    import numpy as np
    x = evaluation.load_samples(folder)
    assert x.shape == (64, 2) and np.isfinite(x).all()
    assert os.path.exists(folder + ".png")


def test_eval_without_checkpoint_says_train_first(tmp_path):
    with pytest.raises(FileNotFoundError, match="train first"):
        evaluation.evaluate(small_config(), str(tmp_path))


def test_reference_checkpoint_layout_samples(tmp_path):
    """A score_sde_pytorch-style checkpoint (module.-prefixed keys, .pth) evaluates and samples here."""
    c = small_config(**{"sampling.n_samples": 32, "sampling.batch_size": 32})
    training.train(c, str(tmp_path / "ours"))
    _, ours = final_weights(tmp_path / "ours")
    ref = {"model": {f"module.{k}": v for k, v in ours["model"].items()}, "ema": ours["ema"],
           "optimizer": ours["optimizer"], "step": 30}
    (tmp_path / "ref" / "checkpoints").mkdir(parents=True)
    torch.save(ref, tmp_path / "ref" / "checkpoints" / "checkpoint_30.pth")
    a = evaluation.load_ema_model(c, str(tmp_path / "ours"))[0].state_dict()
    b = evaluation.load_ema_model(c, str(tmp_path / "ref"))[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert os.path.exists(evaluation.sample(c, str(tmp_path / "ref")))
    ref["model"].pop("module.out.bias")
    torch.save(ref, tmp_path / "ref" / "checkpoints" / "checkpoint_40.pth")
    with pytest.raises(ValueError, match="missing \\(1\\): out.bias"):
        evaluation.load_ema_model(c, str(tmp_path / "ref"))
