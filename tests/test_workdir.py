"""A workdir remembers the config it was made with: keys that define its checkpoints are refused when
they change, run-time keys are allowed and logged; outputs are kept per setting, saved once."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from score_toolkit import checkpoints
from score_toolkit import data_lib
from score_toolkit import errors
from score_toolkit import evaluation
from score_toolkit import plotting
from score_toolkit import run_config
from score_toolkit import training
from configs.swissroll_subvp_mlp import get_config as subvp_config
from configs.swissroll_ve_mlp import get_config as ve_config
from configs.swissroll_vp_mlp import get_config as vp_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(get_config, **overrides):
    c = get_config()
    c.data.n_train, c.data.n_test = 200, 60
    c.model.hidden, c.model.num_layers = 16, 1
    t = c.training
    t.batch_size, t.n_iters, t.log_freq, t.checkpoint_freq, t.snapshot_freq = 32, 10, 5, 10, 1000
    c.sampling.N, c.sampling.n_samples, c.sampling.batch_size = 5, 20, 10
    c.eval.n_nll, c.eval.batch_size, c.eval.n_samples, c.eval.nll_rtol, c.eval.nll_atol = 20, 10, 20, 1e-3, 1e-3
    for key, value in overrides.items():
        *section, name = key.split(".")
        (c[section[0]] if section else c)[name] = value
    return c


def test_a_workdir_refuses_a_config_that_changes_what_its_checkpoints_are(tmp_path):
    workdir = str(tmp_path)
    training.train(tiny(vp_config), workdir)
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    msg = r"was made with another config .*config.sde.name is 'vpsde' there, 'subvpsde' here"
    with pytest.raises(checkpoints.WorkdirMismatchError, match=msg):  # same network shapes: it would resume
        training.train(tiny(subvp_config), workdir)
    with pytest.raises(checkpoints.WorkdirMismatchError,
                       match=r"config.model.embedding_type is 'positional' there, 'fourier' here"):
        evaluation.sample(tiny(ve_config), workdir)
    with pytest.raises(checkpoints.WorkdirMismatchError, match=r"config.seed is 42 there, 7 here"):
        training.train(tiny(vp_config, seed=7), workdir)  # the seed draws the data stream and the weights
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before and not (tmp_path / "eval").exists()
    assert json.load(open(tmp_path / "config.json"))["sde"]["name"] == "vpsde"


def test_run_time_keys_may_change_and_are_logged(tmp_path, caplog):
    workdir = str(tmp_path)
    training.train(tiny(vp_config), workdir)
    reference = (tmp_path / "config.json").read_text()
    caplog.set_level("INFO")
    longer = tiny(vp_config, **{"training.n_iters": 20, "training.log_freq": 10, "sampling.method": "ode"})
    assert training.train(longer, workdir).step == 20
    assert "training.n_iters 10 -> 20" in caplog.text and "sampling.method 'pc' -> 'ode'" in caplog.text
    assert (tmp_path / "config.json").read_text() == reference  # the reference stays what the workdir was made with
    refused, allowed = run_config.config_differences(json.loads(reference), longer)
    assert refused == [] and [k for k, _, _ in allowed] == ["sampling.method", "training.log_freq", "training.n_iters"]


def test_keys_added_to_the_configs_since_the_workdir_was_made_are_allowed(tmp_path, caplog):
    training.train(tiny(vp_config), str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["optim"]["warmup"]  # as a workdir made before optim.warmup existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    caplog.set_level("INFO")
    assert training.train(tiny(vp_config, **{"training.n_iters": 15}), str(tmp_path)).step == 15
    assert "optim.warmup '(absent)' -> 200" in caplog.text


@pytest.mark.slow
def test_the_cli_refusal_names_each_key_on_two_lines(tmp_path):
    training.train(tiny(vp_config), str(tmp_path))
    r = subprocess.run([sys.executable, "main.py", "--mode", "export", "--config", "configs/swissroll_ve_mlp.py",
                        "--config.model.hidden=16", "--config.model.num_layers=1", "--workdir", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(lines) == 2, r.stderr
    for key in ("sde.name", "sde.sigma_max", "model.embedding_type", "model.scale_by_sigma",
                "model.scale_input_by_sigma"):
        assert f"config.{key} is " in lines[0]
    assert "config.sampling.eps" not in lines[0] and lines[1] == "  use the config it was made with, or another --workdir"
    assert not (tmp_path / "export").exists()


def test_nothing_is_written_before_the_inputs_are_checked(tmp_path):
    from configs.fashionmnist_vp_ddpmpp import get_config as image_config
    c = image_config()
    c.data.root = str(tmp_path / "absent")
    with pytest.raises(errors.MissingInputError, match="no IDX file .*absent/train-images-idx3-ubyte"):
        training.train(c, str(tmp_path / "w"))
    c.eval.weights_path, c.eval.feature_extractor = "", "classifier"
    c.eval.feature_path, c.eval.stats_path = str(tmp_path / "clf.pt"), str(tmp_path / "stats.npz")
    with pytest.raises(errors.MissingInputError, match="config.eval.feature_path = .*clf.pt'?: no such file"):
        data_lib.check_quality_files(c)
    with pytest.raises(errors.MissingInputError, match="train first"):
        evaluation.sample(tiny(vp_config), str(tmp_path / "w"))
    assert os.listdir(tmp_path) == []


def test_samples_are_saved_once_per_setting_and_redrawn_when_it_changes(tmp_path):
    c = tiny(vp_config)
    training.train(c, str(tmp_path))
    folder = evaluation.sample(c, str(tmp_path))
    assert folder.endswith(os.path.join("eval", "samples_pc_ckpt10"))
    assert sorted(os.listdir(folder)) == ["batch_0.npz", "batch_1.npz"] and os.path.exists(folder + ".png")
    first = evaluation.load_samples(folder)
    assert first.shape == (20, 2) and first.dtype == np.float32
    assert np.array_equal(evaluation.load_samples(evaluation.sample(c, str(tmp_path))), first)  # read back
    c.sampling.N = 8  # a run-time key: allowed, and the batches it drew are not those of N=5
    assert not np.array_equal(evaluation.load_samples(evaluation.sample(c, str(tmp_path))), first)


def test_eval_batches_follow_the_estimator_and_the_table_notes_unbiased_estimates(tmp_path, capsys):
    c = tiny(vp_config, **{"data.name": "gmm"})
    training.train(c, str(tmp_path))
    a = evaluation.evaluate(c, str(tmp_path))
    assert "mmd_rbf (unbiased; may be < 0)" in capsys.readouterr().out
    c.eval.divergence = "rademacher"  # another estimator: the kept NLL batches must not be reused
    b = evaluation.evaluate(c, str(tmp_path))
    assert a["nll_nats"] != b["nll_nats"] and a["mmd_rbf"] == b["mmd_rbf"]


def test_images_are_saved_as_uint8():
    from configs.fashionmnist_vp_ddpmpp import get_config as image_config
    data = data_lib.load(image_config())
    x = torch.tensor([-1.0, -0.5, 0.0, 1.0, 2.0]).view(1, 1, 1, 5)
    assert data.to_data_space(x).flatten().tolist() == [0, 64, 128, 255, 255]
    assert data.to_data_space(x).dtype == torch.uint8


def test_loss_plot_median_is_centred_and_robust():
    assert plotting.moving_median([1, 1, 100, 1, 1], 1).tolist() == [1, 1, 1, 1, 1]
    falling = [10.0 - i for i in range(9)]  # centred: no lag on a straight line, the ends cut short
    assert plotting.moving_median(falling, 2).tolist() == [9.0, 8.5, 8, 7, 6, 5, 4, 3.5, 3]
