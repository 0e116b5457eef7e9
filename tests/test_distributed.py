"""Data-parallel training under torchrun (CPU, gloo): N processes with global batch B train the same
weights as one process with batch B, resume from each other's checkpoints, and stop together."""
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch

from score_toolkit import checkpoints
from tests.helpers import ROOT, torchrun

# Each test trains through torchrun in subprocesses.
pytestmark = pytest.mark.slow

STEPS = 50
# The swiss-roll MLP (no dropout), global batch 16, a checkpoint every 10 steps.
ARGS = [f"--config.training.n_iters={STEPS}", "--config.training.batch_size=16", "--config.training.log_freq=1",
        "--config.training.checkpoint_freq=10", "--config.training.snapshot_freq=100000",
        "--config.model.hidden=32", "--config.data.n_train=2000", "--config.sampling.N=10",
        "--config.sampling.n_samples=50", "--config.sampling.batch_size=50"]
# Partial sums of one mean taken in another order: equal up to float rounding, not bit for bit.
TOL = dict(rtol=1e-5, atol=1e-6)


def _cmd(workdir, nproc: int, *extra):
    return [*torchrun(nproc), "--mode", "train", "--workdir", str(workdir), *ARGS, *extra]


def _train(workdir, nproc: int, *extra):
    proc = subprocess.run(_cmd(workdir, nproc, *extra), capture_output=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return proc


def _final(workdir):
    return checkpoints.load_latest(os.path.join(workdir, "checkpoints"))


def _max_difference(a, b) -> float:
    """Largest |a - b| over the model's and the EMA's weights; asserts they agree to TOL."""
    pairs = [(a["model"][k], b["model"][k]) for k in a["model"]]
    pairs += list(zip(a["ema"]["shadow_params"], b["ema"]["shadow_params"]))
    for x, y in pairs:
        torch.testing.assert_close(x, y, **TOL)
    return max((x - y).abs().max().item() for x, y in pairs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs: one process, and two processes, with the same global batch."""
    root = tmp_path_factory.mktemp("reference")
    _train(root / "one", 1)
    _train(root / "two", 2)
    return {n: _final(root / name) for n, name in ((1, "one"), (2, "two"))}


def test_two_processes_train_the_weights_of_one(reference):
    (s1, one), (s2, two) = reference[1], reference[2]
    assert s1 == s2 == STEPS
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert torch.equal(one["rng"]["generator"], two["rng"]["generator"])  # the same global data stream
    print(f"max |w_1proc - w_2proc| after {STEPS} steps: {_max_difference(one, two):.3g}")


def _rank_pid(launcher: subprocess.Popen, rank: int, deadline: float) -> int:
    """The pid of torchrun's worker with RANK=rank."""
    while time.time() < deadline and launcher.poll() is None:
        with open(f"/proc/{launcher.pid}/task/{launcher.pid}/children") as f:
            for pid in f.read().split():
                try:
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        if f"RANK={rank}".encode() in f.read().split(b"\0"):
                            return int(pid)
                except OSError:
                    pass
        time.sleep(0.005)
    raise AssertionError("no worker of that rank started")


def _wait_for(path, launcher: subprocess.Popen, deadline: float) -> None:
    while not (path.exists() and path.stat().st_size) and time.time() < deadline and launcher.poll() is None:
        time.sleep(0.002)


def _started(workdir, *extra) -> subprocess.Popen:
    return subprocess.Popen(_cmd(workdir, 2, *extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=ROOT, start_new_session=True)


def _finish(launcher: subprocess.Popen) -> bytes:
    try:
        return launcher.communicate(timeout=120)[1]
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)


def test_kill_9_on_one_rank_resumes_on_two_and_on_one_process(reference, tmp_path):
    launcher = _started(tmp_path / "two")
    deadline = time.time() + 120
    rank1 = _rank_pid(launcher, 1, deadline)
    _wait_for(tmp_path / "two" / "checkpoints" / "checkpoint_10.pt", launcher, deadline)
    os.kill(rank1, signal.SIGKILL)
    _finish(launcher)
    assert launcher.returncode != 0
    left = checkpoints.list_checkpoints(str(tmp_path / "two" / "checkpoints"))
    assert left and left[0][0] < STEPS, "the kill came too late to test anything"
    shutil.copytree(tmp_path / "two", tmp_path / "one")
    _train(tmp_path / "two", 2)
    _train(tmp_path / "one", 1)
    for n in (2, 1):
        step, state = _final(tmp_path / ("two" if n == 2 else "one"))
        assert step == STEPS
        print(f"killed after checkpoint {left[0][0]}, resumed on {n}: max difference to the uninterrupted "
              f"1-process run {_max_difference(reference[1][1], state):.3g}, "
              f"to the 2-process run {_max_difference(reference[2][1], state):.3g}")
    assert "trained on 2 process(es), this run has 1" in open(tmp_path / "one" / "log.txt").read()


def test_sigterm_on_one_rank_stops_both_after_the_same_step(reference, tmp_path):
    launcher = _started(tmp_path)
    deadline = time.time() + 120
    rank1 = _rank_pid(launcher, 1, deadline)
    _wait_for(tmp_path / "metrics.jsonl", launcher, deadline)
    os.kill(rank1, signal.SIGTERM)
    err = _finish(launcher).decode()
    assert launcher.returncode != 0
    (step, _), = checkpoints.list_checkpoints(str(tmp_path / "checkpoints"))
    assert 0 < step < 10, "the signal came too late to test anything"
    assert f"training stopped after step {step}" in err
    _train(tmp_path, 2)
    s, state = _final(tmp_path)
    assert s == STEPS
    _max_difference(reference[2][1], state)


def test_batch_size_not_divisible_by_the_world_size_is_refused(tmp_path):
    proc = subprocess.run(_cmd(tmp_path / "w", 2, "--config.training.batch_size=15"), capture_output=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode != 0
    assert ("config.training.batch_size = 15 is not allowed: must be divisible by the world size 2"
            in proc.stderr.decode())
    assert not (tmp_path / "w").exists()
