"""Progressive distillation against exact teachers: the two-step target, and on Gaussian data (where
every DDIM step is affine) halvings down to one step that reproduce the teacher's N-step map."""
import math

import pytest
import torch

import models
import samplers
import sde_lib
from score_toolkit import distillation
from tests.helpers import make_sdes, mixture_2d

MU = torch.tensor([0.5, -1.0, 0.2], dtype=torch.float64)
STD = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)


def gaussian_score(sde):
    def score(x, t):
        a, s = sde.marginal_coeffs(t.double())
        return -(x - a[:, None] * MU) / (a[:, None] ** 2 * STD ** 2 + s[:, None] ** 2)

    return score


def ddim_map(sde, score, grid, x):
    """DDIM (eta = 0) along grid from x: the teacher's deterministic N-step map."""
    for i in range(len(grid) - 1):
        t, s = grid[i].expand(len(x)), grid[i + 1].expand(len(x))
        x = samplers.ode_step("ddim", sde, score, x, t, s)
    return x


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_one_student_step_with_the_target_lands_on_two_teacher_steps(name):
    sde = make_sdes()[name]
    gm = mixture_2d()
    teacher = gm.score_fn(sde)
    g = torch.Generator().manual_seed(0)
    t = 0.2 + 0.7 * torch.rand(256, generator=g, dtype=torch.float64)
    s, t_mid = t - 0.15, t - 0.05
    z_t = torch.randn(256, 2, generator=g, dtype=torch.float64) * 3
    x_tilde = distillation.two_step_target(sde, teacher, z_t, t, t_mid, s, {})
    two = samplers.ode_step("ddim", sde, teacher, samplers.ode_step("ddim", sde, teacher, z_t, t, t_mid), t_mid, s)
    (a_t, s_t), (a_s, s_s) = sde.marginal_coeffs(t), sde.marginal_coeffs(s)
    one = a_s[:, None] * x_tilde + (s_s / s_t)[:, None] * (z_t - a_t[:, None] * x_tilde)
    torch.testing.assert_close(one, two, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("grid", distillation.PD_GRIDS)
def test_the_students_grid_keeps_every_other_teacher_time(grid):
    sde = sde_lib.VPSDE()
    for n in (1, 2, 8):
        fine = samplers.get_grid(grid, sde, 2 * n, 1e-3)
        torch.testing.assert_close(fine[::2], samplers.get_grid(grid, sde, n, 1e-3), rtol=0, atol=1e-13)


class AffineStudent:
    """x0_hat(z, t_k) = A_k z + b_k per coordinate at the student's grid times t_k: the family that holds
    every DDIM target on Gaussian data. Fitted to the targets of `two_step_target` by least squares."""

    def __init__(self, sde, grid, A, b):
        self.sde, self.grid, self.A, self.b = sde, grid, A, b

    def index(self, t):
        k = (self.grid[None, :] - t[:, None]).abs().argmin(1)
        assert torch.allclose(self.grid[k], t, rtol=0, atol=1e-12)
        return k

    def denoise(self, z, t, **cond):
        k = self.index(t.double())
        return self.A[k] * z + self.b[k]

    def __call__(self, z, t, **cond):  # its score, so it can teach the next halving
        a, s = self.sde.marginal_coeffs(t.double())
        return (a[:, None] * self.denoise(z, t) - z) / s[:, None] ** 2


def fit_student(sde, teacher, fine, n_fit=64):
    """The affine student of the halving whose teacher steps along `fine` (2n steps)."""
    coarse = fine[::2]
    g = torch.Generator().manual_seed(len(fine))
    A, b = torch.zeros(len(coarse), 3, dtype=torch.float64), torch.zeros(len(coarse), 3, dtype=torch.float64)
    for k in range(len(coarse) - 1):
        t, t_mid, s = (fine[2 * k + j].expand(n_fit) for j in range(3))
        z = torch.randn(n_fit, 3, generator=g, dtype=torch.float64) * 2
        x = distillation.two_step_target(sde, teacher, z, t, t_mid, s, {})
        zc, xc = z - z.mean(0), x - x.mean(0)
        A[k] = (zc * xc).sum(0) / (zc * zc).sum(0)
        b[k] = x.mean(0) - A[k] * z.mean(0)
        torch.testing.assert_close(A[k] * z + b[k], x, rtol=1e-10, atol=1e-10)  # the target is affine
    return AffineStudent(sde, coarse, A, b)


@pytest.mark.parametrize("n0", [8, 64])
def test_halvings_to_one_step_reproduce_the_teachers_map(n0):
    """log2 N halvings on VP Gaussian data: each student's one step equals two of its teacher's, so the
    final one-step map equals the first teacher's N-step DDIM map to ~1e-10; that map approaches the
    exact probability flow as N grows (DDIM is first order), and the one-step student with it."""
    sde = sde_lib.VPSDE()
    fine = samplers.get_grid("uniform_t", sde, n0, 1e-3)
    teacher = gaussian_score(sde)
    first = teacher
    for _ in range(int(math.log2(n0))):
        teacher = fit_student(sde, teacher, fine)
        fine = fine[::2]
    assert len(teacher.grid) == 2
    x_T = torch.randn(500, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    one_step = ddim_map(sde, teacher, teacher.grid, x_T)
    n_step = ddim_map(sde, first, samplers.get_grid("uniform_t", sde, n0, 1e-3), x_T)
    torch.testing.assert_close(one_step, n_step, rtol=1e-9, atol=1e-9)
    (a_T, s_T), (a_e, s_e) = (sde.marginal_coeffs(torch.tensor(v, dtype=torch.float64)) for v in (1.0, 1e-3))
    flow = a_e * MU + ((a_e ** 2 * STD ** 2 + s_e ** 2) / (a_T ** 2 * STD ** 2 + s_T ** 2)).sqrt() * (x_T - a_T * MU)
    err = float((one_step - flow).abs().max())
    assert err < 10 / n0, err  # first order: 1.08 at N = 8, 0.145 at N = 64, 0.018 at N = 512


def test_the_loss_vanishes_at_the_exact_student_and_only_there():
    sde = sde_lib.VPSDE()
    pd = distillation.ProgressiveDistillation(sde, "uniform_t", 8, 2, steps_per_halving=10)
    pd.attach(gaussian_score(sde))
    student = fit_student(sde, gaussian_score(sde), pd.times(1))
    x0 = MU + STD * torch.randn(512, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert float(pd(student, x0, torch.Generator().manual_seed(2))) < 1e-20
    student.b = student.b + 1e-3
    assert float(pd(student, x0, torch.Generator().manual_seed(2))) > 1e-7


@pytest.mark.parametrize("weighting,at_t1", [("truncated_snr", 1.0), ("snr_plus_one", None), ("snr", None)])
def test_weightings(weighting, at_t1):
    sde = sde_lib.VPSDE()
    t = torch.tensor([1e-3, 0.5, 1.0], dtype=torch.float64)
    alpha, sigma = sde.marginal_coeffs(t)
    snr = alpha ** 2 / sigma ** 2  # from the coefficients, not from the log-SNR the weights use
    w = distillation.pd_weight(sde, t, weighting)
    expect = {"truncated_snr": snr.clamp_min(1), "snr_plus_one": snr + 1, "snr": snr}[weighting]
    torch.testing.assert_close(w, expect)
    if at_t1 is not None:
        assert float(w[-1]) == at_t1


def test_halving_schedules_that_do_not_divide_are_refused():
    sde = sde_lib.VPSDE()
    for teacher, final in ((64, 3), (64, 64), (48, 4), (8, 16)):
        with pytest.raises(ValueError, match="final_steps"):
            distillation.ProgressiveDistillation(sde, "uniform_t", teacher, final, 10)
    with pytest.raises(ValueError, match="grid must be one of"):
        distillation.ProgressiveDistillation(sde, "ddpm_strided", 8, 2, 10)
    assert distillation.ProgressiveDistillation(sde, "karras", 48, 3, 10).num_halvings == 4


def test_a_guided_teacher_teaches_the_first_halving_and_the_student_the_rest():
    """The target of halving 1 is two steps of the classifier-free guided exact score for each sample's
    label; later halvings are taught by the previous student, unguided (it learned the guidance)."""
    sde, gm = sde_lib.VPSDE(), mixture_2d()
    guided = samplers.cfg_score(gm.conditional_score_fn(sde), 2.0, null_label=len(gm.weights))
    g = torch.Generator().manual_seed(5)
    z_t = torch.randn(64, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, len(gm.weights), (64,), generator=g)
    t = torch.full((64,), 0.8, dtype=torch.float64)
    got = distillation.two_step_target(sde, guided, z_t, t, t - 0.1, t - 0.2, {"y": y})
    bound = lambda x, s: guided(x, s, y=y)  # noqa: E731
    two = samplers.ode_step("ddim", sde, bound, samplers.ode_step("ddim", sde, bound, z_t, t, t - 0.1), t - 0.1, t - 0.2)
    (a_t, s_t), (a_s, s_s) = sde.marginal_coeffs(t), sde.marginal_coeffs(t - 0.2)
    torch.testing.assert_close(a_s[:, None] * got + (s_s / s_t)[:, None] * (z_t - a_t[:, None] * got), two)
    unguided = distillation.two_step_target(sde, gm.conditional_score_fn(sde), z_t, t, t - 0.1, t - 0.2, {"y": y})
    assert float((got - unguided).abs().max()) > 0.1

    pd = distillation.ProgressiveDistillation(sde, "uniform_t", 8, 2, 10)
    pd.attach(guided)
    student = models.Precond(sde, models.get_model("mlp")(dim=2, hidden=8, num_layers=1, num_classes=4), "v")
    assert pd.teacher_of(student) is guided
    pd.halving, pd.student_teacher = 2, student.net
    second = pd.teacher_of(student)
    assert isinstance(second, models.Precond) and second.net is student.net and second.parametrization == "v"
