"""--mode distill: progressive distillation and consistency models trained from a toolkit checkpoint,
resumable bit for bit, sampled from the command line, and refusing bad input before any work."""
import glob
import os

import pytest
import torch

from score_toolkit import checkpoints, distill_run, evaluation, factories, training
from score_toolkit.errors import ConfigError, MissingInputError
from tests.helpers import assert_same_state, final_weights, run_main, small_config


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A swiss-roll VP MLP trained for 60 steps: the teacher of every run here."""
    workdir = str(tmp_path_factory.mktemp("teacher"))
    training.train(small_config(**{"training.n_iters": 60}), workdir)
    return workdir


def pd_config(teacher, **overrides):
    keys = {"distill.method": "progressive", "distill.teacher": teacher, "distill.teacher_steps": 8,
            "distill.final_steps": 2, "distill.steps_per_halving": 20, "training.n_iters": 40,
            "sampling.method": "ddim", "sampling.steps": 2}
    return small_config(**{**keys, **overrides})


def cm_config(teacher, method="consistency_distillation", **overrides):
    keys = {"distill.method": method, "distill.teacher": teacher, "distill.s1": 10, "training.n_iters": 40,
            "sampling.method": "consistency", "sampling.steps": 2}
    return small_config(**{**keys, **overrides})


def test_progressive_writes_each_halving_and_samples_with_its_steps(teacher, tmp_path):
    c = pd_config(teacher)
    distill_run.run(c, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "distilled")) == ["steps_2.pt", "steps_4.pt"]
    assert [s for s, _ in checkpoints.list_checkpoints(str(tmp_path / "checkpoints"))][:2] == [40, 30]
    for name, steps in (("steps_4.pt", 4), ("steps_2.pt", 2)):
        state = torch.load(tmp_path / "distilled" / name, weights_only=True)
        assert state["step"] == {4: 20, 2: 40}[steps]
    # The 4-step student of the first halving, sampled with its 4 DDIM steps through its exported weights.
    folder = evaluation.sample(_with(c, tmp_path), str(tmp_path))
    assert len(evaluation.load_samples(folder)) == c.sampling.n_samples


def _with(c, tmp_path):
    c = c.copy_and_resolve_references()
    c.eval.weights_path, c.sampling.steps = str(tmp_path / "distilled" / "steps_4.pt"), 4
    return c


@pytest.mark.parametrize("lr_zero_method", ["progressive", "consistency_distillation"])
def test_the_student_starts_as_the_teacher(teacher, tmp_path, lr_zero_method):
    """With a zero learning rate the student never moves: its EMA weights at the end are the teacher's,
    through every halving (the student's EMA becomes the next teacher and the student's start)."""
    c = (pd_config if lr_zero_method == "progressive" else cm_config)(teacher, **{"optim.lr": 1e-30})
    distill_run.run(c, str(tmp_path))
    _, state = final_weights(str(tmp_path))
    _, taught = final_weights(teacher)
    for mine, theirs in zip(state["ema"]["shadow_params"], taught["ema"]["shadow_params"]):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method,stop", [("progressive", 13), ("progressive", 20),
                                         ("consistency_distillation", 13), ("consistency_training", 13)])
def test_a_stopped_run_resumes_bit_for_bit(teacher, tmp_path, method, stop):
    """Stopped inside a halving (13) or at its end (20: the student becomes the teacher after the
    restart), the run ends with the weights of one that never stopped; so does a consistency model's
    target network theta-."""
    c = pd_config(teacher) if method == "progressive" else cm_config(teacher, method)
    distill_run.run(c, str(tmp_path / "a"))
    distill_run.run(c, str(tmp_path / "b"), max_steps=stop)
    distill_run.run(c, str(tmp_path / "b"))
    (_, a), (_, b) = final_weights(str(tmp_path / "a")), final_weights(str(tmp_path / "b"))
    assert_same_state(a, b)
    for k in a["loss"].get("target", {}):
        assert torch.equal(a["loss"]["target"][k], b["loss"]["target"][k]), k
    if method == "progressive":
        for name in ("steps_4.pt", "steps_2.pt"):
            x, y = (torch.load(tmp_path / w / "distilled" / name, weights_only=True)["model"] for w in "ab")
            assert all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.slow
def test_a_consistency_model_samples_from_the_command_line(teacher, tmp_path):
    workdir = str(tmp_path / "cm")
    run_main(["--mode", "distill", "--config", "configs/swissroll_vp_mlp.py", "--workdir", workdir,
              f"--config.distill.teacher={teacher}", "--config.distill.method=consistency_distillation",
              "--config.distill.s1=10", "--config.training.n_iters=20", "--config.training.checkpoint_freq=10",
              "--config.model.hidden=32", "--config.model.num_layers=2", "--config.data.n_train=2000",
              "--config.sampling.method=consistency", "--config.sampling.steps=1",
              "--config.training.batch_size=64"])
    proc = run_main(["--mode", "sample", "--config", "configs/swissroll_vp_mlp.py", "--workdir", workdir,
                     f"--config.distill.teacher={teacher}", "--config.distill.method=consistency_distillation",
                     "--config.distill.s1=10", "--config.model.hidden=32", "--config.model.num_layers=2",
                     "--config.data.n_train=2000", "--config.sampling.method=consistency", "--config.sampling.steps=1",
                     "--config.training.batch_size=64", "--config.sampling.n_samples=50"])
    (folder,) = glob.glob(os.path.join(workdir, "eval", "samples_consistency_ckpt*[0-9]"))
    x = torch.as_tensor(evaluation.load_samples(folder))
    assert tuple(x.shape) == (50, 2) and bool(torch.isfinite(x).all())
    assert b"wrote 50 samples" in proc.stderr, proc.stderr[-500:]
    c = cm_config(teacher, **{"sampling.steps": 1})
    model = factories.build_precond(c, factories.build_sde(c), factories.build_model(c))
    assert model.t_min == c.sampling.eps and factories.sampler_kwargs(c)["eps"] == c.sampling.eps


def test_bad_input_is_refused_before_any_work(teacher, tmp_path):
    def refused(c, error, *words):
        with pytest.raises(error) as e:
            distill_run.check_inputs(c, str(tmp_path / "w"))
        for w in words:
            assert w in str(e.value), (w, str(e.value))
        assert not os.path.exists(tmp_path / "w")

    refused(pd_config(str(tmp_path / "nowhere")), MissingInputError, "distill.teacher", "nowhere")
    refused(pd_config(teacher, **{"sde.beta_max": 10.0}), ConfigError, "distill.teacher", "sde.beta_max", "20.0", "10.0")
    refused(pd_config(teacher, **{"model.parametrization": "v"}), ConfigError, "model.parametrization")
    refused(pd_config(teacher, **{"distill.final_steps": 3}), ConfigError, "distill.final_steps = 3")
    refused(pd_config(teacher, **{"training.n_iters": 30}), ConfigError, "training.n_iters", "40")
    refused(pd_config(teacher, **{"distill.grid": "ddpm_strided"}), ConfigError, "distill.grid")
    refused(cm_config(teacher, **{"distill.sigma_min": 1e3}), ConfigError, "distill.sigma_min", "1000")
    refused(cm_config(teacher, **{"distill.solver": "rk4"}), ConfigError, "distill.solver")
    refused(cm_config(teacher, **{"distill.guidance_scale": 2.0}), ConfigError, "distill.guidance_scale")
    refused(small_config(), ConfigError, "distill.method")
    refused(cm_config("", ), ConfigError, "distill.teacher")
    distill_run.check_inputs(cm_config("", "consistency_training"), str(tmp_path / "ct"))  # CT needs no teacher


def test_train_mode_points_a_distillation_config_to_distill(teacher, tmp_path):
    from tests.test_cli import cli
    r = cli("--mode", "train", "--config", "configs/swissroll_vp_mlp.py", "--config.distill.method=progressive",
            "--workdir", str(tmp_path / "w"))
    assert r.returncode == 2 and "--mode distill" in r.stderr


def test_a_class_conditional_teacher_distils_with_its_guidance(tmp_path):
    """A labelled mixture's teacher (label dropout 0.1), distilled at guidance 2: the student trains on
    the data's labels and samples each class from the command line's labels."""
    from configs.gmm_vp_mlp_cond import get_config
    from score_toolkit.config_keys import set_keys
    small = {"data.n_train": 2000, "data.n_test": 300, "model.hidden": 32, "model.num_layers": 2,
             "training.batch_size": 64, "training.log_freq": 10, "training.checkpoint_freq": 10,
             "training.snapshot_freq": 1000, "optim.warmup": 5, "sampling.n_samples": 16, "sampling.batch_size": 16}
    training.train(set_keys(get_config(), **small, **{"training.n_iters": 30}), str(tmp_path / "teacher"))
    c = set_keys(get_config(), **small, **{"distill.method": "progressive", "distill.teacher": str(tmp_path / "teacher"),
                                          "distill.teacher_steps": 4, "distill.final_steps": 2,
                                          "distill.steps_per_halving": 20, "distill.guidance_scale": 2.0,
                                          "training.n_iters": 20, "sampling.method": "ddim", "sampling.steps": 2})
    distill_run.run(c, str(tmp_path / "student"))
    assert (tmp_path / "student" / "distilled" / "steps_2.pt").exists()
    x = evaluation.load_samples(evaluation.sample(c, str(tmp_path / "student")))
    assert x.shape == (16, 2)
