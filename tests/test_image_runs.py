"""An image run end to end on tiny IDX files: classifier, stats, train, eval with bits/dim and FID."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.helpers import write_idx

# Each test trains, samples and evaluates an image model through main.py in subprocesses.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tiny_fashion(tmp_path):
    """Two classes of 8x8 images: bright left half or bright right half, with noise."""
    rng = np.random.default_rng(0)

    def make(n):
        labels = rng.integers(0, 2, n)
        images = rng.integers(0, 60, (n, 8, 8))
        for i, c in enumerate(labels):
            images[i, :, 4 * c:4 * c + 4] += 180
        return images, labels

    root = tmp_path / "data"
    root.mkdir()
    write_idx(root, "train", *make(256))
    write_idx(root, "t10k", *make(64))
    return root


def overrides(root, workdir):
    return [f"--workdir={workdir}", f"--config.data.root={root}", "--config.data.image_size=8", "--config.data.pad_to=0",
            "--config.model.image_size=8", "--config.model.nf=8", "--config.model.ch_mult=(1, 2)",
            "--config.model.num_res_blocks=1", "--config.model.attn_resolutions=(4,)",
            "--config.training.n_iters=6", "--config.training.batch_size=8", "--config.training.checkpoint_freq=3",
            "--config.training.snapshot_freq=6", "--config.sampling.N=3", "--config.sampling.n_samples=8",
            "--config.sampling.batch_size=8", "--config.eval.n_nll=8", "--config.eval.batch_size=8",
            "--config.eval.n_samples=16", "--config.eval.feature_extractor=classifier",
            f"--config.eval.feature_path={workdir}/classifier.pt", f"--config.eval.stats_path={workdir}/stats.npz",
            "--config.eval.classifier_steps=60", "--config.eval.nll_rtol=1e-3", "--config.eval.nll_atol=1e-3"]


def run(mode, config, args):
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), f"--mode={mode}", f"--config={ROOT}/configs/{config}.py"]
    r = subprocess.run(cmd + args, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.mark.parametrize("config", ["fashionmnist_vp_ddpmpp", "fashionmnist_ve_ncsnpp"])
def test_image_run_end_to_end(tiny_fashion, tmp_path, config):
    workdir = tmp_path / "run"
    args = overrides(tiny_fashion, workdir)
    assert "classifier test accuracy 1.0000" in run("classifier", config, args)
    assert "feature statistics of 256 training images" in run("stats", config, args)
    run("train", config, args)
    assert (workdir / "samples" / "samples_6.png").stat().st_size > 500
    run("eval", config, args)
    res = json.load(open(workdir / "eval" / "results.json"))
    assert 0 < res["nll_bits_per_dim"] < 16 and math.isfinite(res["heldout_loss"])
    fid = [k for k in res if k.startswith("FID (classifier features")]
    assert fid and res[fid[0]] > 0
    state = torch.load(workdir / "checkpoints" / "checkpoint_6.pt", weights_only=True)
    assert state["step"] == 6
    # The EMA weights alone, exported, sample exactly as the checkpoint does, with no data files.
    run("export", config, args)
    weights = workdir / "export" / "ema_step6.pt"
    assert weights.stat().st_size < (workdir / "checkpoints" / "checkpoint_6.pt").stat().st_size / 2
    run("sample", config, args + ["--eval_folder=from_checkpoint"])
    no_data = [a for a in args if not a.startswith("--config.data.root")] + [f"--config.data.root={tmp_path}/absent"]
    run("sample", config, no_data + ["--eval_folder=from_export", f"--config.eval.weights_path={weights}"])
    a, b = (np.load(workdir / d / "samples_pc_ckpt6" / "batch_0.npz")["samples"] for d in ("from_checkpoint", "from_export"))
    assert a.shape == (8, 1, 8, 8) and a.dtype == np.uint8 and np.array_equal(a, b)


def test_weights_path_must_exist(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--mode=sample", f"--config={ROOT}/configs/fashionmnist_vp_ddpmpp.py",
           f"--workdir={tmp_path}", f"--config.eval.weights_path={tmp_path}/nothing.pt"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode != 0 and "config.eval.weights_path" in r.stderr and "nothing.pt" in r.stderr
