"""Training on the chain's bound: the term sampler's estimator, the hybrid objective's stopped gradient, a
learned variance converging to its optimum, an exact resume, and the config keys that are refused."""
import json
import math
import os

import pytest
import torch

import likelihood
import models
import samplers
import sde_lib
from configs.image_defaults import get_image_config
from score_toolkit import errors
from score_toolkit import evaluation
from score_toolkit import training
from score_toolkit import validation
from score_toolkit.vlb_losses import LossSecondMomentSampler, VLBLoss
from tests.helpers import GaussianHead, assert_same_state, final_weights, write_tiny_image_set
from tests.helpers import gaussian_step_truth as truth

F64 = torch.float64


# ----- the term sampler ---------------------------------------------------------------------------------

def warmed_sampler(losses, history=3, uniform_mix=0.0):
    sampler = LossSecondMomentSampler(len(losses), history=history, uniform_mix=uniform_mix)
    for _ in range(history):
        sampler.update(torch.arange(len(losses)), torch.as_tensor(losses, dtype=F64))
    return sampler


def test_the_term_sampler_is_uniform_until_every_term_has_its_history():
    sampler = LossSecondMomentSampler(4, history=2)
    sampler.update(torch.tensor([0, 1, 2, 3, 0, 1, 2]), torch.tensor([1.0, 2, 3, 4, 1, 2, 3]))
    assert not sampler.warmed_up()
    torch.testing.assert_close(sampler.probabilities(), torch.full((4,), 0.25, dtype=F64))
    sampler.update(torch.tensor([3]), torch.tensor([4.0]))
    assert sampler.warmed_up()
    p = sampler.probabilities()
    torch.testing.assert_close(p, (0.999 * torch.tensor([1.0, 2, 3, 4]) / 10 + 0.00025).double())
    sampler.update(torch.tensor([0, 0]), torch.tensor([5.0, 5.0]))  # the oldest losses drop out of a full history
    torch.testing.assert_close(sampler.losses[0], torch.tensor([5.0, 5.0], dtype=F64))


@pytest.mark.parametrize("mix", [0.0, 0.3])
def test_the_importance_weighted_estimator_is_unbiased(mix):
    L = torch.tensor([0.1, 4.0, 1.0, 0.5, 2.5], dtype=F64)
    sampler = warmed_sampler(L * torch.tensor([1.0, 0.5, 2.0, 1.0, 1.0], dtype=F64), uniform_mix=mix)
    p = sampler.probabilities()
    assert abs(float(p.sum()) - 1) < 1e-12
    # exactly: E_p[w L] = sum_j p_j L_j / (n p_j) = mean_j L_j
    assert abs(float((p * L / (len(L) * p)).sum()) - float(L.mean())) < 1e-12
    j, w = sampler.sample(400_000, torch.Generator().manual_seed(0))
    est = w * L[j]
    assert abs(float(est.mean()) - float(L.mean())) < 4 * float(est.std()) / math.sqrt(len(est))


def test_the_estimator_has_no_variance_when_p_is_proportional_to_the_losses():
    L = torch.tensor([0.1, 4.0, 1.0, 0.5, 2.5], dtype=F64)
    sampler = warmed_sampler(L)  # constant histories: sqrt(E L_j^2) = L_j
    j, w = sampler.sample(1000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(w * L[j], torch.full((1000,), float(L.mean()), dtype=F64), rtol=1e-12, atol=0)


# ----- the losses ---------------------------------------------------------------------------------------

class SplitHead(torch.nn.Module):
    """A network whose prediction and v have separate parameters (to see where gradients go)."""
    learn_variance = True

    def __init__(self):
        super().__init__()
        self.mean = torch.nn.Linear(2, 2)
        self.v = torch.nn.Linear(2, 2)

    def forward(self, x, label):
        h = x + label[:, None] / 999
        return torch.cat([self.mean(h), self.v(h)], 1)


def levels_data(n, d, seed=0, std=0.3):
    g = torch.Generator().manual_seed(seed)
    k = ((torch.randn(n, d, generator=g, dtype=F64) * std).clamp(-1, 1) + 1) / 2 * 255
    return likelihood.levels_to_model_space(k.round(), dtype=torch.float32)


def test_the_hybrid_objective_trains_the_mean_by_l_simple_alone():
    sde = sde_lib.VPSDE()
    grid = samplers.ddpm_strided_grid(sde, 20)
    x0 = levels_data(256, 2)
    grads = {}
    for weight in (0.001, 100.0):
        torch.manual_seed(0)
        model = models.Precond(sde, SplitHead())
        VLBLoss(sde, grid, "hybrid", vlb_weight=weight)(model, x0, torch.Generator().manual_seed(1)).backward()
        grads[weight] = [p.grad.clone() for p in model.net.parameters()]
    for a, b in zip(grads[0.001][:2], grads[100.0][:2]):  # the mean's parameters: no L_vlb gradient at all
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(grads[0.001][2], grads[100.0][2])  # the head's: lambda L_vlb's
    torch.manual_seed(0)
    model = models.Precond(sde, SplitHead())
    VLBLoss(sde, grid, "vlb")(model, x0, torch.Generator().manual_seed(1)).backward()
    assert float(model.net.mean.weight.grad.abs().sum()) > 0  # objective "vlb": L_vlb trains the mean too


def test_data_that_are_not_8_bit_are_refused_before_the_network_call():
    sde = sde_lib.VPSDE()

    class Never(torch.nn.Module):
        learn_variance = True

        def forward(self, x, label):
            raise AssertionError("called")

    loss_fn = VLBLoss(sde, samplers.ddpm_strided_grid(sde, 5))
    with pytest.raises(ValueError, match="256-level data in model space"):
        loss_fn(models.Precond(sde, Never()), torch.full((4, 2), 0.001))
    with pytest.raises(ValueError, match="256-level data"):
        loss_fn(models.Precond(sde, Never()), torch.full((4, 2), 1.5))


def test_a_per_step_v_trained_by_l_vlb_converges_to_v_star():
    """1-D Gaussian data at 8 bits (std 0.25, so the quantisation adds 1/12 (2/255)^2 to its variance),
    the exact eps*, and one trainable v per step of a 10-step chain."""
    sde, mu, std = sde_lib.VPSDE(), 0.0, 0.25
    std_q = math.sqrt(std ** 2 + (2 / 255) ** 2 / 12)
    grid = samplers.ddpm_strided_grid(sde, 10)
    net = GaussianHead(sde, grid, mu, std_q, trainable=True)
    model = models.Precond(sde, net)
    loss_fn = VLBLoss(sde, grid, "vlb")
    opt = torch.optim.Adam([net.v], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 200, 0.2)
    g = torch.Generator().manual_seed(0)
    for step in range(600):
        x0 = levels_data(2048, 1, seed=step + 1, std=std).double()
        opt.zero_grad()
        loss_fn(model, x0, g).backward()
        opt.step()
        sched.step()
    v_star = truth(sde, grid[:-1], grid[1:], mu, std_q)[1]
    err = (net.v.detach()[:-1] - v_star).abs()
    assert float(err.max()) < 0.01, (net.v.detach()[:-1], v_star)


# ----- training runs ------------------------------------------------------------------------------------

@pytest.fixture
def tiny_images(tmp_path):
    return write_tiny_image_set(tmp_path / "data", 128, 32)


def tiny_config(root, **keys):
    c = get_image_config("fashion_mnist", "vpsde", "ddpmpp", "small")
    c.device, c.data.root, c.data.image_size, c.data.pad_to = "cpu", str(root), 8, 0
    m = c.model
    m.image_size, m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions, m.learn_variance = 8, 8, (1, 2), 1, (4,), True
    t = c.training
    t.n_iters, t.batch_size, t.checkpoint_freq, t.snapshot_freq, t.log_freq = 6, 8, 3, 1000, 1
    t.objective, t.vlb_steps, t.time_sampler, t.time_history = "hybrid", 4, "loss_second_moment", 1
    s = c.sampling
    s.method, s.steps, s.variance, s.n_samples, s.batch_size, s.gamma_images = "ancestral", 4, "learned_range", 8, 8, 16
    e = c.eval
    e.n_nll, e.batch_size, e.n_samples, e.feature_extractor = 8, 8, 8, "none"
    e.enable_bound, e.bound_steps, e.bound_variance, e.n_bound = True, 6, "learned_range", 16
    for key, value in keys.items():
        section, name = key.split(".")
        c[section][name] = value
    return c


def test_a_killed_hybrid_run_with_the_term_sampler_resumes_bit_for_bit(tiny_images, tmp_path):
    c = tiny_config(tiny_images)
    whole = training.train(c, str(tmp_path / "a"))
    assert whole.loss_fn.sampler.warmed_up()  # the importance sampler was drawing by its history
    training.train(c, str(tmp_path / "b"), max_steps=3)  # stops after the checkpoint at 3
    resumed = training.train(c, str(tmp_path / "b"))
    (_, a), (_, b) = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert_same_state(a, b)
    assert torch.equal(a["loss"]["losses"], b["loss"]["losses"]) and torch.equal(a["loss"]["counts"], b["loss"]["counts"])
    assert torch.equal(resumed.loss_fn.sampler.losses, whole.loss_fn.sampler.losses)


def test_eval_reports_the_bound_beside_the_flow_and_keeps_gamma(tiny_images, tmp_path):
    c = tiny_config(tiny_images, **{"training.time_sampler": "uniform"})
    training.train(c, str(tmp_path))
    res = evaluation.evaluate(c, str(tmp_path))
    name = "vlb_bits_per_dim_upper_bound (learned_range, 6 steps)"
    assert res[name] > 0 and res["nll_bits_per_dim"] > 0
    parts = sum(res[f"vlb_{p}_bits_per_dim"] for p in ("prior", "steps", "decoder"))
    assert abs(parts - res[name]) < 1e-9 * res[name]
    again = evaluation.evaluate(c, str(tmp_path))  # every batch read back from its log
    assert again[name] == res[name]
    c.sampling.variance, c.eval.bound_variance = "analytic", "analytic"
    res = evaluation.evaluate(c, str(tmp_path))
    kept = json.load(open(tmp_path / "eval" / "samples_ancestral_ckpt6" / "gamma.json"))
    assert len(kept["gamma"]) == 4 and kept["settings"]["items"] == 16
    assert len(json.load(open(tmp_path / "eval" / "gamma_bound_ckpt6.json"))["gamma"]) == 7
    assert "vlb_bits_per_dim_upper_bound (analytic, 6 steps)" in res


def test_points_sample_ancestrally_with_analytic_variances_from_the_command_line(tmp_path):
    from tests.helpers import small_config
    c = small_config(**{"sampling.method": "ancestral", "sampling.variance": "analytic", "sampling.steps": 8,
                        "sampling.gamma_images": 200})
    training.train(c, str(tmp_path))
    folder = evaluation.sample(c, str(tmp_path))
    kept = json.load(open(os.path.join(folder, "gamma.json")))
    assert len(kept["gamma"]) == 8 and all(0 < g < 1.5 for g in kept["gamma"])
    assert evaluation.load_samples(folder).shape == (100, 2)


@pytest.mark.parametrize("keys, key", [
    ({"training.objective": "hybrid", "model.learn_variance": False, "sampling.variance": "fixed_small",
      "eval.bound_variance": "fixed_small"}, "training.objective"),
    ({"training.objective": "elbo"}, "training.objective"),
    ({"model.learn_variance": False, "training.objective": "vlb"}, "sampling.variance"),
    ({"model.learn_variance": False, "training.objective": "vlb", "sampling.variance": "fixed_large"},
     "eval.bound_variance"),
    ({"training.vlb_steps": 1000}, "training.vlb_steps"),
    ({"eval.bound_steps": -1}, "eval.bound_steps"),
    ({"training.time_uniform_mix": 1.5}, "training.time_uniform_mix"),
    ({"training.time_sampler": "importance"}, "training.time_sampler"),
    ({"training.continuous": False}, "training.objective"),
    ({"sampling.variance": "large"}, "sampling.variance"),
])
def test_bad_variance_and_bound_settings_name_their_key(tiny_images, keys, key):
    with pytest.raises(errors.ConfigError, match=key.replace(".", r"\.")):
        validation.validate_config(tiny_config(tiny_images, **keys))


def test_the_bound_objectives_need_8_bit_images():
    from tests.helpers import small_config
    with pytest.raises(errors.ConfigError, match=r"training\.objective.*8-bit images"):
        validation.validate_config(small_config(**{"training.objective": "vlb"}))
    with pytest.raises(errors.ConfigError, match=r"eval\.enable_bound.*8-bit images"):
        validation.validate_config(small_config(**{"eval.enable_bound": True}))
