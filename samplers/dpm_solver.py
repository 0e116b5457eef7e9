"""DPM-Solver (Lu et al. 2022) and DPM-Solver++ (Lu et al. 2022b): exponential integrators of the
probability-flow ODE in the log-SNR lambda = log(alpha / sigma), for any linear SDE.

In lambda the flow's linear part integrates exactly and what is left is the model's prediction of
the noise (eps_hat = -sigma s) or of the data (x0_hat, Tweedie). From s to t, h = lambda_t - lambda_s > 0:

    noise form:  x_t = (alpha_t / alpha_s) x_s - alpha_t int_{lambda_s}^{lambda_t} e^(-lambda) eps_hat dlambda
    data form:   x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^(lambda)  x0_hat dlambda

Holding the prediction constant gives the first-order step (DDIM with eta = 0):

    x_t = (alpha_t / alpha_s) x_s - sigma_t (e^h - 1) eps_hat(s)  =  (sigma_t / sigma_s) x_s + alpha_t (1 - e^-h) x0_hat(s).

Higher orders expand the prediction in lambda, P(lambda_s + u) = P + u P' + u^2/2 P'' + ..., and
integrate each term exactly. With phi_1(z) = e^z - 1, phi_2(z) = phi_1(z) / z - 1, phi_3(z) = phi_2(z) / z - 1/2,

    noise form:  x_t = (alpha_t / alpha_s) x_s - sigma_t (phi_1(h) P + h phi_2(h) P' + h^2 phi_3(h) P'' + ...)
    data form:   x_t = (sigma_t / sigma_s) x_s - alpha_t (phi_1(-h) P + h phi_2(-h) P' + h^2 phi_3(-h) P'' + ...)

DPM-Solver (noise form) estimates the derivatives from extra calls inside each step (singlestep,
Runge-Kutta-like); DPM-Solver++ (data form, better with guidance) from the previous steps'
predictions (multistep, Adams-like; "2M", "3M") or from a midpoint call ("2S").

Every sampler here takes `steps` = its number of score calls (nfe == steps) and defaults to the
grid uniform in lambda (DPM-Solver's "logSNR" spacing); any grid works, and the multistep
formulas use its actual step ratios r = h_prev / h.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm, trange

from sde_lib import SDE
from sde_lib.checks import check_one_of, check_positive_int
from samplers.base import at, check_order, coeff, ignore, noise_estimate, sampler

Tensor = torch.Tensor
__all__ = ["dpm_solver_sample", "dpmpp_2s_sample", "dpmpp_2m_sample", "dpmpp_3m_sample", "singlestep_orders",
           "dpm_solver_loop", "dpmpp_2s_loop", "dpmpp_2m_loop", "dpmpp_3m_loop", "DPMPP_3M_VARIANTS"]

# DPM-Solver++'s multistep samplers drop to lower orders on their last steps below this many steps
# (the reference implementation's documented bound): it steadies very short runs.
LOWER_ORDER_FINAL_BELOW = 15
# DPM-Solver++(3M)'s two updates (`dpmpp_multistep_update`): the second difference as the reference
# implementations scale it (second order), or in full (third order).
DPMPP_3M_VARIANTS = ("reference", "third_order")
_SECOND_DIFFERENCE = {"reference": 0.5, "third_order": 1.0}  # the share of the second difference each takes


def singlestep_orders(steps: int, order: int, lower_order_final: bool = True) -> List[int]:
    """The orders of the singlestep updates that spend exactly `steps` score calls (an order-k update
    costs k calls), one grid interval per update.

    lower_order_final=True is DPM-Solver's "fast" recipe: as many order-`order` updates as fit, the
    remainder in one or two lower-order updates at the end (order 3: steps = 3K gives [3]*(K-1) + [2, 1],
    3K+1 gives [3]*K + [1], 3K+2 gives [3]*K + [2]; order 2: [2]*K, or [2]*K + [1]).
    lower_order_final=False puts the remainder (one update of order steps % order) first instead, so a
    multiple of `order` gives updates of full order only.
    """
    steps = check_positive_int(steps, "steps")
    order = check_order(order, (1, 2, 3), "singlestep DPM-Solver")
    k, rest = divmod(steps, order)
    if not lower_order_final:
        return ([rest] if rest else []) + [order] * k
    if order == 3 and rest == 0:
        return [3] * (k - 1) + [2, 1]
    return [order] * k + ([rest] if rest else [])


def _singlestep_plan(fixed_order: Optional[int] = None, noise_form: bool = True):
    """plan(steps, n, options) for a singlestep sampler (`samplers.base.Sampler`): `steps` score calls
    split by `singlestep_orders`, one grid interval per update; an explicit grid of n intervals without
    steps takes n updates of full order. The noise form refuses one update across a whole named grid."""
    def plan(steps: Optional[int], n: Optional[int], options: dict) -> Tuple[int, dict]:
        order = fixed_order or options.get("order", 3)
        lower_order_final = options.get("lower_order_final", True)
        orders = [check_order(order, (1, 2, 3), "dpm_solver")] * n if steps is None else \
            singlestep_orders(steps, order, lower_order_final)
        if n is not None and n != len(orders):
            raise ValueError(f"the grid has {n} intervals, but steps={steps} makes {len(orders)} updates of orders "
                             f"{orders}: pass {len(orders) + 1} times (see singlestep_orders), or no steps")
        if noise_form and n is None and len(orders) == 1 and orders[0] > 1:
            # One update from T to eps: h ~ 10 in log-SNR, and the midpoint's correction multiplies the
            # change of the noise prediction by e^h - 1 ~ 1e4 (measured: errors 40-70x DDIM's).
            raise ValueError(f"steps={steps} makes one update of order {orders[0]} across the whole grid, which "
                             f"the noise form cannot take; use steps >= {orders[0] + 1}, steps=1 (DDIM), or the "
                             "data form (dpmpp_2s, dpmpp_2m)")
        return len(orders), {"orders": orders}
    return plan


# ----- the two first-order steps ---------------------------------------------------------------------

def _coeffs(sde: SDE, t: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """(alpha, sigma, lambda) at times t [B], float64."""
    alpha, sigma = sde.marginal_coeffs(t)
    return alpha, sigma, sde.log_snr(t)


def noise_step(sde: SDE, x: Tensor, s: Tensor, t: Tensor, e: Tensor) -> Tensor:
    """x_t = (alpha_t / alpha_s) x_s - sigma_t (e^h - 1) e: the exact flow for a constant noise prediction e."""
    (a_s, _, l_s), (a_t, g_t, l_t) = _coeffs(sde, s), _coeffs(sde, t)
    return coeff(a_t / a_s, x) * x - coeff(g_t * torch.expm1(l_t - l_s), x) * e


def data_step(sde: SDE, x: Tensor, s: Tensor, t: Tensor, d: Tensor) -> Tensor:
    """x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^-h) d: the exact flow for a constant data prediction d."""
    (_, g_s, l_s), (a_t, g_t, l_t) = _coeffs(sde, s), _coeffs(sde, t)
    return coeff(g_t / g_s, x) * x - coeff(a_t * torch.expm1(l_s - l_t), x) * d


def _at_log_snr(sde: SDE, s: Tensor, t: Tensor, r: float) -> Tensor:
    """The time whose lambda is lambda_s + r h: a fraction r of the step in log-SNR."""
    l_s, l_t = sde.log_snr(s), sde.log_snr(t)
    return sde.t_from_log_snr(l_s + r * (l_t - l_s))


def _phi_2(z: Tensor) -> Tensor:
    """phi_2(z) = (e^z - 1) / z - 1 ~ z / 2."""
    return torch.expm1(z) / z - 1


def _phi_3(z: Tensor) -> Tensor:
    """phi_3(z) = phi_2(z) / z - 1/2 ~ z / 6."""
    return _phi_2(z) / z - 0.5


# ----- DPM-Solver: singlestep, noise form --------------------------------------------------------

def dpm_solver_update(sde: SDE, eps_fn, x: Tensor, s: Tensor, t: Tensor, order: int, e_s: Tensor) -> Tensor:
    """One DPM-Solver-k update from s to t (Lu et al. 2022, Algorithms 1 and 2; r = 1/2 and 1/3, 2/3),
    given e_s = eps_hat(x_s, s); makes order - 1 more calls of eps_fn(x, t).

      k = 1:  x_t = N(e_s)                       with N(e) = noise_step(x_s, s -> t, e)
      k = 2:  x_t = N(eps_hat(u1)),              u1 at lambda_s + h/2, x_u1 = N_{s->u1}(e_s)
      k = 3:  x_u1 = N_{s->u1}(e_s),             u1 at lambda_s + h/3
              x_u2 = N_{s->u2}(e_s) - sigma_u2 (r2/r1) phi_2(r2 h) (eps_hat(u1) - e_s),   u2 at lambda_s + 2h/3
              x_t  = N(e_s) - sigma_t (1/r2) phi_2(h) (eps_hat(u2) - e_s)
    """
    if order == 1:
        return noise_step(sde, x, s, t, e_s)
    if order == 2:
        u1 = _at_log_snr(sde, s, t, 0.5)
        return noise_step(sde, x, s, t, eps_fn(noise_step(sde, x, s, u1, e_s), u1))
    r1, r2 = 1 / 3, 2 / 3
    h = sde.log_snr(t) - sde.log_snr(s)
    u1, u2 = _at_log_snr(sde, s, t, r1), _at_log_snr(sde, s, t, r2)
    e1 = eps_fn(noise_step(sde, x, s, u1, e_s), u1)
    x2 = noise_step(sde, x, s, u2, e_s) - coeff(sde.marginal_coeffs(u2)[1] * (r2 / r1) * _phi_2(r2 * h), x) * (e1 - e_s)
    e2 = eps_fn(x2, u2)
    return noise_step(sde, x, s, t, e_s) - coeff(sde.marginal_coeffs(t)[1] / r2 * _phi_2(h), x) * (e2 - e_s)


def dpm_solver_loop(sde: SDE, score, x: Tensor, grid: Tensor, *, orders: Sequence[int], callback=ignore,
                    progress: bool = False) -> Tensor:
    """DPM-Solver: update i from grid[i] to grid[i + 1] is a singlestep update of order orders[i] in the
    noise form (`dpm_solver_update`), orders[i] score calls. `dpm_solver_sample(steps=, order=,
    lower_order_final=)` splits `steps` calls into orders by `singlestep_orders` (default grid uniform in
    log-SNR, one interval per update); nfe = sum(orders). `callback` receives {i, t, x, denoised}.

    A noise-form step of h in log-SNR subtracts terms ~e^h times larger than its result, so one step
    across the whole range (h ~ 10) keeps only ~1e-10 of float64; the data form (DPM-Solver++) does not.
    """
    if len(orders) != len(grid) - 1:
        raise ValueError(f"orders has {len(orders)} updates for a grid of {len(grid) - 1} intervals")

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        return noise_estimate(sde, t, score(x, t.to(x.dtype)))

    for i, k in enumerate(tqdm(orders, disable=not progress, desc="dpm_solver_sample")):
        s, t = at(grid, i, x), at(grid, i + 1, x)
        # One call at the start of the update; an order-k update makes k - 1 more inside it.
        sc = score(x, s.to(x.dtype))
        x0, e_s = sde.tweedie(x, s, sc), noise_estimate(sde, s, sc)
        x = dpm_solver_update(sde, eps_fn, x, s, t, k, e_s)
        callback({"i": i, "t": t, "x": x, "denoised": x0})
    return x


dpm_solver_sample = sampler("dpm_solver", dpm_solver_loop, default_grid="uniform_log_snr", plan=_singlestep_plan(),
                            options={"order": 3, "lower_order_final": True})


# ----- DPM-Solver++: data form ----------------------------------------------------------------------

def dpmpp_2s_loop(sde: SDE, score, x: Tensor, grid: Tensor, *, orders: Sequence[int], callback=ignore,
                  progress: bool = False) -> Tensor:
    """DPM-Solver++(2S): singlestep second order in the data form with r = 1/2,

        x_u = D_{s->u}(x0_hat(s)),  u at lambda_s + h/2;    x_t = D_{s->t}(x0_hat(u)),

    D the first-order data step (`data_step`): the midpoint rule in lambda; an update of order 1 is D
    alone. `dpmpp_2s_sample(steps=)` splits `steps` calls as `singlestep_orders(steps, 2)` (an odd one
    makes one first-order update); nfe = sum(orders). `callback` receives {i, t, x, denoised}.
    """
    if len(orders) != len(grid) - 1:
        raise ValueError(f"orders has {len(orders)} updates for a grid of {len(grid) - 1} intervals")
    for i, k in enumerate(tqdm(orders, disable=not progress, desc="dpmpp_2s_sample")):
        s, t = at(grid, i, x), at(grid, i + 1, x)
        x0 = sde.tweedie(x, s, score(x, s.to(x.dtype)))
        if k == 2:
            # Second order: the data prediction at the log-SNR midpoint, reached by a first-order step.
            u = _at_log_snr(sde, s, t, 0.5)
            x_u = data_step(sde, x, s, u, x0)
            x = data_step(sde, x, s, t, sde.tweedie(x_u, u, score(x_u, u.to(x.dtype))))
        else:
            x = data_step(sde, x, s, t, x0)
        callback({"i": i, "t": t, "x": x, "denoised": x0})
    return x


dpmpp_2s_sample = sampler("dpmpp_2s", dpmpp_2s_loop, default_grid="uniform_log_snr",
                          plan=_singlestep_plan(2, noise_form=False),
                          options={"lower_order_final": True})


def _multistep_order(i: int, n: int, order: int, lower_order_final: bool) -> int:
    """The order of update i of n: lower while the history is short (update i has i earlier
    predictions), and with lower_order_final and n < LOWER_ORDER_FINAL_BELOW, the last updates
    drop to n - i (the final one is first order)."""
    k = min(order, i + 1)
    return min(k, n - i) if lower_order_final and n < LOWER_ORDER_FINAL_BELOW else k


def dpmpp_multistep_update(sde: SDE, x: Tensor, times: List[Tensor], preds: List[Tensor], t: Tensor,
                           order: int, variant: str = "reference") -> Tensor:
    """One DPM-Solver++ multistep update of order 1, 2 or 3 from s = times[-1] to t, from the data
    predictions preds[-k:] at times[-k:] (the newest last). With h = lambda_t - lambda_s, the earlier
    steps h_0 = lambda_s - lambda_(-1), h_1 = lambda_(-1) - lambda_(-2), r0 = h_0 / h, r1 = h_1 / h:

      D1_0 = (d_0 - d_(-1)) / r0,   D1_1 = (d_(-1) - d_(-2)) / r1       (each ~ h x0_hat')
      order 2:  x_t = D_{s->t}(d_0 + D1_0 / 2)                           (Lu et al. 2022b, Algorithm 2)
      order 3:  D2 = 2 (D1_0 - D1_1) / (r0 + r1)  (~ h^2 x0_hat''),   D1 = D1_0 + r0 D2 / 2  (~ h x0_hat' at s)
                x_t = D_{s->t}(d_0) - alpha_t (phi_2(-h) D1 + c phi_3(-h) D2)

    D the first-order data step (`data_step`), phi as in the module docstring: with c = 1 (variant
    "third_order") the quadratic through the last three predictions, integrated exactly, a third-order
    update. With c = 1/2 (variant "reference") the update of the reference implementations (diffusers'
    and k-diffusion's multistep third order), which scale the second difference by half: second order
    as h -> 0, but with a smaller error constant on the long steps of 10-20-step runs (`dpmpp_3m_sample`).
    """
    check_one_of("variant", variant, DPMPP_3M_VARIANTS)
    s, d0 = times[-1], preds[-1]
    if order == 1:
        return data_step(sde, x, s, t, d0)
    lam = [sde.log_snr(u) for u in times[-order:]] + [sde.log_snr(t)]
    h = lam[-1] - lam[-2]
    r0 = (lam[-2] - lam[-3]) / h
    D1_0 = (d0 - preds[-2]) / coeff(r0, x)
    if order == 2:
        return data_step(sde, x, s, t, d0 + D1_0 / 2)
    r1 = (lam[-3] - lam[-4]) / h
    D1_1 = (preds[-2] - preds[-3]) / coeff(r1, x)
    D2 = 2 * (D1_0 - D1_1) / coeff(r0 + r1, x)
    D1 = D1_0 + coeff(r0 / 2, x) * D2
    c = _SECOND_DIFFERENCE[variant]
    alpha_t = sde.marginal_coeffs(t)[0]
    return data_step(sde, x, s, t, d0) - coeff(alpha_t * _phi_2(-h), x) * D1 - coeff(c * alpha_t * _phi_3(-h), x) * D2


def _multistep(sde: SDE, score, x: Tensor, grid: Tensor, order: int, lower_order_final: bool, variant: str,
               callback, progress: bool, name: str) -> Tensor:
    """DPM-Solver++(kM): one score call per step at the step's start, the update from the last k."""
    n = len(grid) - 1
    times, preds = [], []
    for i in trange(n, disable=not progress, desc=f"{name}_sample"):
        s, t = at(grid, i, x), at(grid, i + 1, x)
        # The newest data prediction joins the history; only the last `order` are needed.
        times, preds = times[-(order - 1):] + [s], preds[-(order - 1):] + [sde.tweedie(x, s, score(x, s.to(x.dtype)))]
        x = dpmpp_multistep_update(sde, x, times, preds, t, _multistep_order(i, n, order, lower_order_final), variant)
        callback({"i": i, "t": t, "x": x, "denoised": preds[-1]})
    return x


def dpmpp_2m_loop(sde: SDE, score, x: Tensor, grid: Tensor, *,
                  lower_order_final: bool = True,        # first-order last step when steps < 15
                  callback=ignore, progress: bool = False) -> Tensor:
    """DPM-Solver++(2M): multistep second order in the data form (`dpmpp_multistep_update`), first order
    on the first step and, with lower_order_final and fewer than 15 steps, on the last. One score call per
    step: nfe = steps. `callback` receives {i, t, x, denoised} after every step.
    """
    return _multistep(sde, score, x, grid, 2, lower_order_final, "third_order", callback, progress, "dpmpp_2m")


def dpmpp_3m_loop(sde: SDE, score, x: Tensor, grid: Tensor, *,
                  lower_order_final: bool = True,        # orders 2, 1 on the last steps when steps < 15
                  variant: str = "reference",            # "reference" (the default: lower error at 10-20 steps) or "third_order"
                  callback=ignore, progress: bool = False) -> Tensor:
    """DPM-Solver++(3M): multistep in the data form (`dpmpp_multistep_update`), orders 1, 2 on the first
    two steps and, with lower_order_final and fewer than 15 steps, 2, 1 on the last two. nfe = steps.

    `variant` picks the third-order update: "third_order" integrates the quadratic through the last three
    predictions exactly (order 3); "reference" halves its second difference as diffusers and k-diffusion
    do (order 2). Measured on the 2-D mixtures of `benchmarks/bench_quality.py` (exact score, float64),
    "reference" has the lower error at 10-20 steps, "third_order" only past ~80-160 steps (README), so
    "reference" is the default. `callback` receives {i, t, x, denoised} after every step.
    """
    check_one_of("variant", variant, DPMPP_3M_VARIANTS)
    return _multistep(sde, score, x, grid, 3, lower_order_final, variant, callback, progress, "dpmpp_3m")


dpmpp_2m_sample = sampler("dpmpp_2m", dpmpp_2m_loop, default_grid="uniform_log_snr")
dpmpp_3m_sample = sampler("dpmpp_3m", dpmpp_3m_loop, default_grid="uniform_log_snr")
