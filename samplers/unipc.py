"""UniPC (Zhao et al. 2023): a multistep predictor (UniP) and a corrector (UniC) of one analytic
form, in the data (x0) form of the probability-flow ODE in log-SNR, for any linear SDE.

From s to t with h = lambda_t - lambda_s > 0, the flow in the data form is (see samplers.dpm_solver)

    x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^-h) d_0 - alpha_t sum_{k>=1} h^k g_k(-h) d^(k),

d_0 = x0_hat(x_s, s), d^(k) its k-th derivative in lambda at s, g_1(z) = (e^z - 1) / z - 1 and
g_{k+1}(z) = g_k(z) / z - 1 / (k+1)!  (g_k(z) = z phi_{k+1}(z) ~ z / (k+1)!). UniPC replaces the sum by
B(h) times a combination of divided differences of earlier predictions d_m at lambda_m = lambda_s + r_m h:

    D_m = (d_m - d_0) / r_m,      x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^-h) d_0 - alpha_t B(h) sum_m rho_m D_m,

and as D_m = sum_k r_m^(k-1) h^k d^(k) / k!, matching the first K terms asks

    sum_m rho_m r_m^(k-1) = k! g_k(-h) / B(h),   k = 1..K        (one equation per difference).

B(h) is any function with B(h) ~ -h: "bh1" takes B = -h (the paper's B_1(h) = h at the data form's step
-h), "bh2" B = e^-h - 1 (B_2(h) = e^h - 1). With K >= 2 differences the K conditions are solved exactly and
B(h) cancels. With one difference UniPC takes rho = 1/2, the h -> 0 limit of 1! g_1(-h) / B(h), which keeps
the order; there B(h) sets the step: bh2's UniP-2 is DPM-Solver++(2M) and its UniC-1 the exponential
trapezoid rule x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^-h) (d_0 + d_t) / 2.

  UniP-p (predictor): the p - 1 previous predictions, r_m < 0; local error O(h^(p+1)), order p.
  UniC-p (corrector): the same with d_t = x0_hat(x_t^pred, t) added at r = 1; x_t is recomputed from
          x_s, and d_t (at the predicted point) is kept as the next step's d_0, so the corrector costs
          no extra call. Local error O(h^(p+2)): UniPC-p is of order p + 1.

One score call per step (none after the last step, which takes no corrector): nfe = steps.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from tqdm.auto import trange

from sde_lib import SDE
from sde_lib.checks import check_one_of
from samplers.base import at, check_order, coeff, ignore, sampler
from samplers.dpm_solver import data_step

Tensor = torch.Tensor
__all__ = ["unipc_loop", "unipc_sample", "unipc_update", "UNIPC_VARIANTS"]

UNIPC_VARIANTS = ("bh1", "bh2")


def _rhos(r: Tensor, h: Tensor, variant: str) -> Tuple[Tensor, Tensor]:
    """(rho [B, K], B(h) [B]) for step ratios r [B, K] and steps h [B]: the K order conditions
    sum_m rho_m r_m^(k-1) = k! g_k(-h) / B(h), or rho = 1/2 for K = 1."""
    z = -h
    B_h = z if variant == "bh1" else torch.expm1(z)
    if r.shape[-1] == 1:
        return torch.full_like(r, 0.5), B_h
    g, rhs = torch.expm1(z) / z - 1, []
    for k in range(1, r.shape[-1] + 1):
        rhs.append(math.factorial(k) * g / B_h)
        g = g / z - 1 / math.factorial(k + 1)
    R = torch.stack([r ** (k - 1) for k in range(1, r.shape[-1] + 1)], dim=-2)  # R[k, m] = r_m^(k-1)
    return torch.linalg.solve(R, torch.stack(rhs, dim=-1)), B_h


def unipc_update(sde: SDE, x: Tensor, times: List[Tensor], preds: List[Tensor], t: Tensor, order: int,
                 variant: str = "bh2", d_t: Optional[Tensor] = None) -> Tensor:
    """One UniP-`order` step from s = times[-1] to t [B] given the data predictions preds (newest last,
    at least `order` of them), or with d_t = x0_hat(x_t^pred, t) the UniC-`order` step that replaces it.
    x [B, ...] at s; returns x at t. The module docstring gives the rule."""
    s, d0 = times[-1], preds[-1]
    lam_s = sde.log_snr(s)
    h = sde.log_snr(t) - lam_s
    r = [(sde.log_snr(u) - lam_s) / h for u in times[-order:-1]]
    D = [(d - d0) / coeff(r_m, x) for d, r_m in zip(preds[-order:-1], r)]
    if d_t is not None:
        r, D = r + [torch.ones_like(h)], D + [d_t - d0]
    x_t = data_step(sde, x, s, t, d0)
    if not D:
        return x_t
    rho, B_h = _rhos(torch.stack(r, dim=-1), h, variant)
    alpha_t = sde.marginal_coeffs(t)[0]
    return x_t - coeff(alpha_t * B_h, x) * sum(coeff(rho[:, m], x) * D_m for m, D_m in enumerate(D))


def unipc_loop(sde: SDE, score, x: Tensor, grid: Tensor, *,
               order: int = 2,                           # 1, 2 or 3: UniP-order with UniC, order + 1 in all
               variant: str = "bh2",                     # B(h): "bh2" (e^h - 1) or "bh1" (h)
               lower_order_final: bool = True,           # orders ..., 2, 1 on the last steps, any steps
               callback=ignore, progress: bool = False) -> Tensor:
    """UniPC (`unipc_update`): step i predicts with UniP-k from the last k data predictions,
    k = min(order, i + 1) (and with lower_order_final min(k, n - i), so the last step is first order),
    calls the score at the predicted point, then corrects with UniC-k from that call; the last step is
    not corrected. nfe = steps. Deterministic given x_T. `callback` receives {i, t (the new time), x,
    denoised (at the step's start)}. `unipc_sample` defaults to the grid uniform in log-SNR.

    As in UniPC's reference, lower_order_final applies at any number of steps (DPM-Solver++ only below 15):
    the last steps run where the prediction hardly moves. The reference suggests bh1 for unconditional
    sampling under 10 steps; on a two-mode 2-D mixture with its exact score bh1's errors at 5 and 10 steps
    are 1.0-3.6 times bh2's (2.0-3.6 at order 2): its rho = 1/2 overshoots the exact 1/2 - h/6 + ... on long steps.
    """
    order = check_order(order, (1, 2, 3), "unipc")
    check_one_of("variant", variant, UNIPC_VARIANTS)
    n = len(grid) - 1
    # The one call that no step's corrector pays for: the prediction at T.
    T = at(grid, 0, x)
    times, preds = [T], [sde.tweedie(x, T, score(x, T.to(x.dtype)))]
    for i in trange(n, disable=not progress, desc="unipc_sample"):
        t, d_s = at(grid, i + 1, x), preds[-1]
        k = min(order, i + 1, n - i) if lower_order_final else min(order, i + 1)
        # Predictor UniP-k: the last k predictions' differences, integrated through B(h).
        x_t = unipc_update(sde, x, times, preds, t, k, variant)
        # The last step is not corrected: no later step would use a call at its end.
        if i < n - 1:
            # The call the next step needs anyway, made at the predicted point ...
            d_t = sde.tweedie(x_t, t, score(x_t, t.to(x.dtype)))
            # ... and corrector UniC-k: the same update from x_s with d_t added, one order higher.
            x_t = unipc_update(sde, x, times, preds, t, k, variant, d_t)
            times, preds = (times + [t])[-order:], (preds + [d_t])[-order:]
        x = x_t
        callback({"i": i, "t": t, "x": x, "denoised": d_s})
    return x


unipc_sample = sampler("unipc", unipc_loop, default_grid="uniform_log_snr")
