"""Gaussian mixtures: data whose score and log-density are known in closed form at every time.

Under a linear SDE (`sde_lib`), x_t = alpha(t) x_0 + sigma(t) z, so a mixture

    p_0(x) = sum_k w_k N(x; mu_k, S_k)

stays a mixture at every t:

    p_t(x) = sum_k w_k N(x; alpha(t) mu_k, alpha(t)^2 S_k + sigma(t)^2 I),

with score  grad log p_t(x) = sum_k r_k(x) C_k^{-1} (alpha mu_k - x),  r_k the posterior
responsibilities and C_k = alpha^2 S_k + sigma^2 I. These are the known answers that samplers,
estimators and the likelihood are tested against, and a ready `score_fn` for research code.

With the component as a class label, r_k(x) = p_t(k | x) is the exact noise-conditional classifier
and C_k^{-1} (alpha mu_k - x) the exact class-conditional score: the known answers for guidance.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from sde_lib.sdes import SDE, _as_time

Tensor = torch.Tensor


class GaussianMixture:
    """A mixture of K Gaussians in D dimensions.

    Args:
      weights: [K] non-negative, normalised here.
      means: [K, D].
      covs: [K, D, D] covariance matrices, or [K, D] diagonal variances, or [K] isotropic variances.
    Computations run in float64; results come back in the dtype of the input x.
    """

    def __init__(self, weights: Sequence[float], means, covs):
        w = torch.as_tensor(weights, dtype=torch.float64)
        mu = torch.as_tensor(means, dtype=torch.float64)
        c = torch.as_tensor(covs, dtype=torch.float64)
        if mu.ndim != 2 or w.shape != mu.shape[:1]:
            raise ValueError(f"means must be [K, D] with K = len(weights); got means {tuple(mu.shape)}, "
                             f"weights {tuple(w.shape)}")
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {w.tolist()}")
        K, D = mu.shape
        if c.ndim == 1:
            c = c[:, None, None] * torch.eye(D, dtype=torch.float64)
        elif c.ndim == 2:
            c = torch.diag_embed(c)
        if c.shape != (K, D, D):
            raise ValueError(f"covs must be [K, D, D], [K, D] or [K]; got {tuple(c.shape)} for K={K}, D={D}")
        self.weights, self.means, self.covs = w / w.sum(), mu, c
        self.dim = D

    # ----- data -----
    def sample(self, n: int, generator: Optional[torch.Generator] = None,
               return_labels: bool = False):
        """n samples [n, D] (float32), and their component labels [n] if asked."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        L = torch.linalg.cholesky(self.covs)
        x = self.means[k] + (L[k] @ z.unsqueeze(-1)).squeeze(-1)
        return (x.float(), k) if return_labels else x.float()

    # ----- the marginal at time t -----
    def _marginal(self, sde: Optional[SDE], t: Tensor, B: int):
        """Means [B, K, D] and covariances [B, K, D, D] of p_t's components (t: [B] or scalar)."""
        if sde is None:
            return self.means.expand(B, -1, -1), self.covs.expand(B, -1, -1, -1)
        t = t.expand(B)
        alpha, sigma = sde.marginal_coeffs(t)
        eye = torch.eye(self.dim, dtype=torch.float64)
        m = alpha[:, None, None] * self.means
        C = alpha[:, None, None, None] ** 2 * self.covs + sigma[:, None, None, None] ** 2 * eye
        return m, C

    def _component_terms(self, x: Tensor, sde: Optional[SDE], t):
        """Per-component log w_k N(x; m_k, C_k) [B, K] and precision-times-residual [B, K, D]."""
        xf = x.reshape(x.shape[0], -1).double().cpu()
        if xf.shape[1] != self.dim:
            raise ValueError(f"x has {xf.shape[1]} dimensions per sample, the mixture has {self.dim}")
        if t is not None:
            t = torch.as_tensor(t).double().cpu().reshape(-1)
            if len(t) > 1 and bool((t == t[0]).all()):
                t = t[:1]  # samplers pass one time for the whole batch: factorise once
        m, C = self._marginal(sde, t, 1 if t is None or len(t) == 1 else xf.shape[0])
        L = torch.linalg.cholesky(C)
        P = torch.cholesky_inverse(L)                               # C^{-1}: [1 or B, K, D, D]
        r = m - xf[:, None, :]                                      # [B, K, D]
        prec_r = torch.einsum("bkde,bke->bkd", P.expand(r.shape[0], -1, -1, -1), r)
        maha = -(r * prec_r).sum(-1)                                # -(x - m)^T C^{-1} (x - m)
        logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        logn = 0.5 * (maha - logdet - self.dim * math.log(2 * math.pi))
        return torch.log(self.weights) + logn, prec_r

    def log_prob(self, x: Tensor, sde: Optional[SDE] = None, t=None) -> Tensor:
        """log p_t(x) [B] for x [B, ...] (flattened to D); p_0 when no SDE is given."""
        comp, _ = self._component_terms(x, sde, t)
        return torch.logsumexp(comp, -1).to(device=x.device, dtype=x.dtype)

    def score(self, x: Tensor, sde: Optional[SDE] = None, t=None) -> Tensor:
        """grad_x log p_t(x), shaped like x."""
        comp, prec_r = self._component_terms(x, sde, t)
        resp = torch.softmax(comp, -1)
        s = (resp.unsqueeze(-1) * prec_r).sum(1)
        return s.reshape(x.shape).to(device=x.device, dtype=x.dtype)

    def score_fn(self, sde: SDE):
        """The exact `score_fn(x, t)` of this mixture under `sde`, for samplers and the likelihood."""

        def score_fn(x: Tensor, t: Tensor) -> Tensor:
            return self.score(x, sde, _as_time(t, x))

        return score_fn

    # ----- labels: component k is class k -----
    def log_posterior(self, x: Tensor, sde: Optional[SDE] = None, t=None) -> Tensor:
        """log p_t(k | x) [B, K], the exact noise-conditional classifier when the label is the component:

            log p_t(k | x) = log w_k N(x; alpha mu_k, C_k) - log p_t(x).

        Differentiable in x (its gradient is s_k(x) - s(x), the component's score minus the mixture's),
        so it serves as `classifier_fn(x, t)` logits for classifier guidance. p_0 when no SDE is given.
        """
        comp, _ = self._component_terms(x, sde, t)
        return torch.log_softmax(comp, -1).to(device=x.device, dtype=x.dtype)

    def posterior(self, x: Tensor, sde: Optional[SDE] = None, t=None) -> Tensor:
        """p_t(k | x) [B, K]: the responsibilities of the components at time t (rows sum to 1)."""
        return self.log_posterior(x, sde, t).exp()

    def conditional_score_fn(self, sde: SDE, null_label: Optional[int] = None):
        """The exact class-conditional `score_fn(x, t, y)` under `sde`, label = component:

            s(x, t, y) = grad log p_t(x | y) = C_y^{-1} (alpha mu_y - x)     for y in [0, K),
            s(x, t, null_label) = grad log p_t(x)                            (the mixture's score),

        so it stands for a class-conditional network trained with label dropout (null label
        `null_label`, default K). y: int64 [B]; a label outside [0, K) that is not the null label
        raises ValueError.
        """
        K = len(self.weights)
        null = K if null_label is None else null_label
        if isinstance(null, bool) or not isinstance(null, int) or null < K:
            raise ValueError(f"null_label must be an int >= K = {K} (past the class labels), got {null_label!r}")

        def score_fn(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
            y = torch.as_tensor(y).reshape(-1).cpu()
            bad = (y < 0) | ((y >= K) & (y != null))
            if y.is_floating_point() or len(y) != x.shape[0] or bad.any():
                raise ValueError(f"y must be {x.shape[0]} integer labels in [0, {K}) or {null} (the null label); "
                                 f"got {y[bad][:1].tolist() or y.dtype} of shape {tuple(y.shape)}")
            comp, prec_r = self._component_terms(x, sde, _as_time(t, x))
            mixture = (torch.softmax(comp, -1).unsqueeze(-1) * prec_r).sum(1)      # [B, D]
            own = prec_r[torch.arange(len(y)), y.clamp(max=K - 1)]                  # C_y^{-1} (alpha mu_y - x)
            s = torch.where((y == null)[:, None], mixture, own)
            return s.reshape(x.shape).to(device=x.device, dtype=x.dtype)

        return score_fn

    def component(self, k: int) -> "GaussianMixture":
        """Component k alone, as a one-component mixture (the data of class k)."""
        return GaussianMixture([1.0], self.means[k:k + 1], self.covs[k:k + 1])

    def component_of(self, x: Tensor) -> Tensor:
        """The most probable component of each sample under p_0: [B] long."""
        comp, _ = self._component_terms(x, None, None)
        return comp.argmax(-1)

    # ----- conditioning on a linear observation -----
    def at(self, sde: SDE, t) -> "GaussianMixture":
        """p_t as a mixture: components N(alpha mu_k, alpha^2 S_k + sigma^2 I) at the scalar time t."""
        m, C = self._marginal(sde, torch.as_tensor(t, dtype=torch.float64).reshape(1), 1)
        return GaussianMixture(self.weights, m[0], C[0])

    def condition(self, A: Tensor, y: Tensor, sigma_y: float = 0.0) -> "GaussianMixture":
        """The posterior p(x | y) for y = A x + sigma_y n (A [m, D], y [m], n ~ N(0, I)), a mixture again:
        component k is N(mu_k + G_k (y - A mu_k), S_k - G_k A S_k) with G_k = S_k A^T M_k^{-1} (the Schur
        complement), M_k = A S_k A^T + sigma_y^2 I, and weight proportional to w_k N(y; A mu_k, M_k), its
        marginal likelihood of y. sigma_y = 0 needs every M_k invertible (A of full row rank)."""
        A = torch.as_tensor(A, dtype=torch.float64)
        y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
        if A.ndim != 2 or A.shape[1] != self.dim or A.shape[0] != len(y):
            raise ValueError(f"A must be [m, {self.dim}] and y [m]; got A {tuple(A.shape)}, y {tuple(y.shape)}")
        if sigma_y < 0:
            raise ValueError(f"sigma_y must be >= 0, got {sigma_y!r}")
        M = A @ self.covs @ A.T + sigma_y ** 2 * torch.eye(len(y), dtype=torch.float64)   # [K, m, m]
        G = self.covs @ A.T @ torch.linalg.inv(M)                                           # [K, D, m]
        resid = y - self.means @ A.T                                                        # [K, m]
        means = self.means + (G @ resid[..., None]).squeeze(-1)
        covs = self.covs - G @ A @ self.covs
        covs = 0.5 * (covs + covs.transpose(-1, -2))  # exactly symmetric, for the Cholesky factors
        L = torch.linalg.cholesky(M)
        sol = torch.cholesky_solve(resid[..., None], L).squeeze(-1)
        log_lik = -0.5 * ((resid * sol).sum(-1) + 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
                          + len(y) * math.log(2 * math.pi))
        log_w = torch.log(self.weights) + log_lik
        return _Conditioned(torch.softmax(log_w, 0), means, covs)

    def project(self, D: Tensor) -> "GaussianMixture":
        """The law of D x (D [m, dim]), a mixture again: components N(D mu_k, D S_k D^T). For a
        down-sampling D, the low-resolution data a cascade's base model learns."""
        D = self._operator(D)
        return GaussianMixture(self.weights, self.means @ D.T, D @ self.covs @ D.T)

    def super_resolution_score_fn(self, sde: SDE, D: Tensor):
        """The exact score_fn(x, t, low_res, aug_level) of a super-resolution model for one Gaussian
        N(mu, S): x given the augmented low-resolution c = a D x + sigma_a e, where (a, sigma_a) =
        sde.marginal_coeffs(aug_level T) (the SDE's own forward marginal at the level s in [0, 1]):

            E[x | c] = mu + G (c - a D mu),   G = a S D^T (a^2 D S D^T + sigma_a^2 I)^-1,   C = S - a G D S,
            s(x_t | c) = -(alpha_t^2 C + sigma_t^2 I)^-1 (x_t - alpha_t E[x | c]).

        low_res [B, m], aug_level [B] (or a number), x [B, dim]; each sample its own level."""
        if len(self.weights) != 1:
            raise ValueError(f"super_resolution_score_fn is the closed form of one Gaussian; this mixture has "
                             f"{len(self.weights)} components")
        D, mu, S = self._operator(D), self.means[0], self.covs[0]
        eye_m, eye_d = torch.eye(D.shape[0], dtype=torch.float64), torch.eye(self.dim, dtype=torch.float64)

        def score_fn(x: Tensor, t: Tensor, low_res: Tensor, aug_level) -> Tensor:
            B = x.shape[0]
            level = torch.as_tensor(aug_level, dtype=torch.float64).reshape(-1).expand(B)
            a, sa = (v[:, None, None] for v in sde.marginal_coeffs(level * sde.T))
            G = a * S @ D.T @ torch.linalg.inv(a ** 2 * D @ S @ D.T + sa ** 2 * eye_m)       # [B, dim, m]
            c = low_res.reshape(B, -1).double()
            m = mu + (G @ (c - a[:, :, 0] * (D @ mu))[..., None]).squeeze(-1)              # [B, dim]
            C = S - a * G @ D @ S
            alpha, sigma = (v[:, None, None] for v in sde.marginal_coeffs(_as_time(t, x).expand(B)))
            prec = torch.linalg.inv(alpha ** 2 * C + sigma ** 2 * eye_d)
            s = -(prec @ (x.reshape(B, -1).double() - alpha[:, :, 0] * m)[..., None]).squeeze(-1)
            return s.reshape(x.shape).to(device=x.device, dtype=x.dtype)

        return score_fn

    def _operator(self, D: Tensor) -> Tensor:
        D = torch.as_tensor(D, dtype=torch.float64)
        if D.ndim != 2 or D.shape[1] != self.dim:
            raise ValueError(f"D must be a matrix [m, {self.dim}] acting on this mixture's points, got {tuple(D.shape)}")
        return D

    def mean(self) -> Tensor:
        """E[x] [D], float64."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """Cov[x] [D, D], float64: the components' covariances and the spread of their means."""
        d = self.means - self.mean()
        return torch.einsum("k,kij->ij", self.weights, self.covs) + torch.einsum("k,ki,kj->ij", self.weights, d, d)


class _Conditioned(GaussianMixture):
    """A posterior mixture whose components may be degenerate (a noiseless observation fixes directions):
    its covariances are positive semi-definite, so sampling adds a tiny jitter to factorise them."""

    def __init__(self, weights, means, covs):
        self.weights, self.means, self.covs, self.dim = weights, means, covs, means.shape[1]

    def sample(self, n: int, generator: Optional[torch.Generator] = None, return_labels: bool = False):
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        vals, vecs = torch.linalg.eigh(self.covs)
        root = vecs * vals.clamp(min=0).sqrt()[:, None, :]
        x = self.means[k] + (root[k] @ z.unsqueeze(-1)).squeeze(-1)
        return (x.float(), k) if return_labels else x.float()
