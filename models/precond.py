"""The one place where a network's output becomes a score, an x0 estimate and a noise estimate.

A raw network F(x, c_noise, **cond) predicts one of four targets of x_t = alpha x_0 + sigma z
(alpha = alpha(t), sigma = sigma(t) of the SDE). In EDM's form (Karras et al. 2022, Table 1) the
denoiser is

    D(x_t) = E[x_0 | x_t] = c_skip x_t + c_out F(c_in x_t, c_noise),

and for each parametrization (with n^2 = alpha^2 + sigma^2):

    parametrization   F predicts            c_skip       c_out          c_in   c_noise
    "eps"             z                     1/alpha      -sigma/alpha   1      999 t (VP-type) or sigma (VE)
    "score"           grad log p_t = -z/s   1/alpha      sigma^2/alpha  1      (the same)
    "x0"              x_0                   0            1              1
    "v"               alpha z - sigma x_0   alpha/n^2    -sigma/n^2     1

c_in = 1: the networks here (NCSN++, DDPM++, DDPM, the point MLP) take x_t as it is, as their
reference checkpoints were trained. c_noise is the SDE's conditioning: VP-type SDEs label time by
999 t (or the discrete step index), VE by sigma(t) (or the discrete sigma_i). A network built with
`scale_by_sigma` divides its own output by that label (the reference NCSN parametrization), so it
is a "score" network and needs sigma labels (`validate_config` refuses other combinations).

The score and the noise estimate follow from D by s = (alpha D - x) / sigma^2, eps = -sigma s; each
is computed here from (x, F) by its own closed form, so no output loses digits to cancellation at
small sigma (e.g. s = -F / sigma for "eps", never (alpha D - x) / sigma^2).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from sde_lib import SDE, append_dims
from sde_lib import reverse_step
from sde_lib.checks import check_one_of, cond_keys
from models.variance_head import split_variance

Tensor = torch.Tensor
PARAMETRIZATIONS = ("eps", "score", "x0", "v")


def noise_label(sde: SDE, t: Tensor, continuous: bool = True) -> Tensor:
    """c_noise: 999 t (or the integer step) for time-conditioned SDEs, sigma(t) (or sigma_i) for VE."""
    if sde.conditioning == "sigma":
        return sde.marginal_coeffs(t)[1] if continuous else sde.discrete_coeffs(t)[1]
    return t * 999 if continuous else sde.discrete_index(t).to(t.dtype)


def _n2(alpha: Tensor, sigma: Tensor) -> Tensor:
    return alpha ** 2 + sigma ** 2


# output = a x + b F, per parametrization and output, as functions of (alpha, sigma) (float64 [B]);
# a is None where it is 0, so those outputs are a single product.
_XF = {
    "eps": {"x0": lambda al, si: (1 / al, -si / al),
            "eps": lambda al, si: (None, torch.ones_like(al)),
            "score": lambda al, si: (None, -1 / si)},
    "score": {"x0": lambda al, si: (1 / al, si ** 2 / al),
              "eps": lambda al, si: (None, -si),
              "score": lambda al, si: (None, torch.ones_like(al))},
    "x0": {"x0": lambda al, si: (None, torch.ones_like(al)),
           "eps": lambda al, si: (1 / si, -al / si),
           "score": lambda al, si: (-1 / si ** 2, al / si ** 2)},
    "v": {"x0": lambda al, si: (al / _n2(al, si), -si / _n2(al, si)),
          "eps": lambda al, si: (si / _n2(al, si), al / _n2(al, si)),
          "score": lambda al, si: (-1 / _n2(al, si), -al / (si * _n2(al, si)))},
}


def eps_error(param: str, F: Tensor, x0: Tensor, z: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """eps_hat - z for a raw output F at x_t = alpha x0 + sigma z, written without cancellation.

    ||eps_hat - z||^2 = sigma^2 ||s_hat - s_true||^2 is the DSM loss with weighting sigma^2:
      eps:   F - z;   score: sigma F + z;   x0: alpha (x0 - F) / sigma;   v: alpha (F - v) / n^2.
    alpha, sigma: [B] in F's dtype.
    """
    a, s = append_dims(alpha, F.ndim), append_dims(sigma, F.ndim)
    if param == "eps":
        return F - z
    if param == "score":
        return torch.addcmul(z, s, F)
    if param == "x0":
        return a * (x0 - F) / s
    return a * (F - (a * z - s * x0)) / (a ** 2 + s ** 2)


class Precond(nn.Module):
    """A raw network wrapped for an SDE: `score`, `denoise` and `eps` from one network call each.

    Calling the wrapper gives the score, so it is a `score_fn(x, t, **cond)` for samplers and the
    likelihood. `raw(x, t, **cond)` is the network's own output F, which the losses train.

    Args:
      sde: the SDE whose alpha(t), sigma(t) and conditioning the scalings use.
      net: a module called as net(x, c_noise, **cond).
      parametrization: what net predicts, one of PARAMETRIZATIONS (default: `sde.parametrization`).
      continuous: False for networks of the discrete DDPM / SMLD losses (step-index or sigma_i labels,
        and alpha, sigma of the discrete chain).

    A network with a variance head (`net.learn_variance`, `models.variance_head`) outputs 2C channels:
    `raw`, the score, x0 and eps come from the first C, and `denoise_and_v` / `raw_and_v` give the
    mixing vector v beside them, from the same call.
    """

    def __init__(self, sde: SDE, net: nn.Module, parametrization: Optional[str] = None, continuous: bool = True):
        super().__init__()
        param = parametrization or sde.parametrization
        check_one_of("parametrization", param, PARAMETRIZATIONS)
        self.sde, self.net, self.parametrization, self.continuous = sde, net, param, continuous
        self.cond_keys = cond_keys(net)  # what the network declares it takes (None: anything)
        self.learns_variance = bool(getattr(net, "learn_variance", False))

    def select(self, cond: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """The part of a data batch's conditioning (e.g. {"y": labels}) that the network takes: an
        unconditional network trains on labelled data without seeing the labels."""
        return dict(cond) if self.cond_keys is None else {k: v for k, v in cond.items() if k in self.cond_keys}

    def _alpha_sigma(self, t64: Tensor) -> Tuple[Tensor, Tensor]:
        return self.sde.marginal_coeffs(t64) if self.continuous else self.sde.discrete_coeffs(t64)

    def raw(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        """F(x, c_noise(t), **cond): the network's own output, shaped like x. Conditioning is checked
        once per run by the caller (`sde_lib.checks.check_cond` against `cond_keys`), not per call."""
        return self.raw_and_v(x, t, **cond)[0]

    def raw_and_v(self, x: Tensor, t: Tensor, **cond) -> Tuple[Tensor, Optional[Tensor]]:
        """(F, v): the prediction and the variance head's v (None without a head), one network call."""
        out = self.net(x, noise_label(self.sde, t, self.continuous), **cond)
        return split_variance(out) if self.learns_variance else (out, None)

    def convert(self, which: str, x: Tensor, t: Tensor, F: Tensor) -> Tensor:
        """The score, x0 or eps estimate (`which`) of a raw output F at (x, t), by its closed form."""
        a, b = _XF[self.parametrization][which](*self._alpha_sigma(t.double()))
        out = append_dims(b.to(F.dtype), F.ndim) * F
        return out if a is None else torch.addcmul(out, append_dims(a.to(F.dtype), x.ndim), x)

    def _output(self, which: str, x: Tensor, t: Tensor, cond: dict) -> Tensor:
        return self.convert(which, x, t, self.raw(x, t, **cond))

    def reverse_kernel(self, x: Tensor, t: Tensor, s: Tensor, variance: str = "fixed_small", *,
                       gamma=None, data_range: float = 2.0, **cond) -> Tuple[Tensor, Tensor]:
        """The model's reverse kernel p(x_s | x_t = x) = N(mean, exp(log_var)) for a step from t to s < t
        (float64 [B], any grid of any linear SDE), from one network call: mean = c_t x + c_0 x0_hat in x's
        dtype, and log_var float64, [B] for the fixed and analytic variances (gamma: Gamma at t) or shaped
        like x for "learned_range" (the variance head's v). See `sde_lib.reverse_step`."""
        q = reverse_step.posterior(self.sde, t.double(), s.double())
        if variance == "learned_range":
            x0, v = self.denoise_and_v(x, t, **cond)
        else:
            x0, v = self.denoise(x, t, **cond), None
        var = reverse_step.reverse_variance(self.sde, t.double(), s.double(), variance, v=v, gamma=gamma,
                                            data_range=data_range, q=q)
        mean = torch.addcmul(append_dims(q.c_t.to(x.dtype), x.ndim) * x, append_dims(q.c_0.to(x.dtype), x.ndim), x0)
        return mean, var.log()

    def denoise_and_v(self, x: Tensor, t: Tensor, **cond) -> Tuple[Tensor, Tensor]:
        """(x0_hat, v) from one call of a network with a variance head; a ValueError without one."""
        if not self.learns_variance:
            raise ValueError("variance 'learned_range' needs a network with a variance head "
                             "(config.model.learn_variance = True), and this one has none")
        F, v = self.raw_and_v(x, t, **cond)
        return self.convert("x0", x, t, F), v

    def forward(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        """The score grad_x log p_t(x) [B, ...] at times t [B]."""
        return self._output("score", x, t, cond)

    def denoise(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        """E[x_0 | x_t = x], the x0 estimate D(x) = c_skip x + c_out F."""
        return self._output("x0", x, t, cond)

    def eps(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        """E[z | x_t = x], the noise estimate -sigma(t) s(x, t)."""
        return self._output("eps", x, t, cond)
