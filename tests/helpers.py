"""What the test modules share: data with exact answers (Gaussian mixtures and point masses, whose
scores, flows and log-densities are known at every t), the checks built on them, small training
configs, score_sde's network layouts, and main.py run in subprocesses.

Test modules import from here (`from tests.helpers import ...`), never from one another or from
conftest, which holds only fixtures.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

import likelihood
import samplers
import sde_lib
from sde_lib import append_dims
from sde_lib.analytic import GaussianMixture
from sde_lib.reverse_step import learned_range_target, posterior

F64 = torch.float64
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "main.py")


# ----- SDEs and data with exact answers ----------------------------------------------------------------

def make_sdes() -> dict:
    """A fresh VP, sub-VP and VE SDE (N = 1000 each), by name."""
    return {"vp": sde_lib.VPSDE(N=1000), "subvp": sde_lib.subVPSDE(N=1000), "ve": sde_lib.VESDE(N=1000)}


def mixture_2d() -> GaussianMixture:
    """Two well-separated 2-D components with different weights and anisotropic stds."""
    return GaussianMixture([0.3, 0.7], [[-2.0, 0.0], [2.0, 1.0]], [[0.25, 0.16], [0.09, 0.12]])


def random_mixture(dim: int, k: int = 3, seed: int = 1) -> GaussianMixture:
    """k components in `dim` dimensions with random means and full covariances."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, dim, generator=g) * 1.5
    A = torch.randn(k, dim, dim, generator=g) * 0.3
    covs = A @ A.transpose(1, 2) + 0.1 * torch.eye(dim)
    w = torch.linspace(1, 2, k)
    return GaussianMixture(w, means, covs)


def point_mass_score(sde, mu):
    """The exact score of p_t = N(alpha_t mu, sigma_t^2 I): data that are the single point mu."""
    def score(x, t):
        alpha, sigma = sde.marginal_coeffs(t.double())
        return (-(x - append_dims(alpha, x.ndim) * mu) / append_dims(sigma ** 2, x.ndim)).to(x.dtype)
    return score


class Counted:
    """A score function that counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


# ----- sampler checks ------------------------------------------------------------------------------------

def random_grid(sde, n: int, seed: int) -> torch.Tensor:
    """T, n - 1 random times in (eps, T) in decreasing order, eps (float64 [n + 1])."""
    g = torch.Generator().manual_seed(seed)
    eps = sde.sampling_eps
    inner = eps + (sde.T - eps) * torch.rand(n - 1, generator=g, dtype=F64) ** 2
    return torch.cat([torch.tensor([sde.T], dtype=F64), inner.sort(descending=True).values,
                      torch.tensor([eps], dtype=F64)])


def assert_recovers(gm, x, mean_atol=0.1):
    """Component weights within 0.03, per-component, per-axis std within 10%, means within mean_atol."""
    assert torch.isfinite(x).all()
    k = gm.component_of(x)
    for j in range(len(gm.weights)):
        w = (k == j).double().mean().item()
        assert abs(w - gm.weights[j].item()) < 0.03, f"component {j}: weight {w:.3f} vs {gm.weights[j]:.3f}"
        xs = x[k == j].double()
        true_std = gm.covs[j].diagonal().sqrt()
        assert torch.allclose(xs.std(0), true_std, rtol=0.10), f"component {j}: std {xs.std(0)} vs {true_std}"
        assert torch.allclose(xs.mean(0), gm.means[j], atol=mean_atol)


def spread(gm) -> float:
    """sqrt of the data's total variance."""
    mean = gm.weights @ gm.means
    within = gm.weights @ gm.covs.diagonal(dim1=1, dim2=2).sum(-1)
    between = gm.weights @ ((gm.means - mean) ** 2).sum(-1)
    return math.sqrt(float(within + between))


_FLOWS: Dict[tuple, Tuple[torch.Tensor, torch.Tensor]] = {}


def flow_reference(sde_name: str, n: int = 64, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """n prior draws x_T [n, 2] (float64, `seed`) of make_sdes()[sde_name] and their converged
    probability-flow endpoints at sde.sampling_eps for `mixture_2d()` (dopri5, tolerances 1e-10).
    Computed once per (sde_name, n, seed); each call returns fresh copies."""
    key = (sde_name, n, seed)
    if key not in _FLOWS:
        sde, gm = make_sdes()[sde_name], mixture_2d()
        x_T = sde.prior_sampling((n, 2), torch.Generator().manual_seed(seed), dtype=F64)
        ref, _ = samplers.solve_flow(sde, gm.score_fn(sde), x_T, sde.T, sde.sampling_eps, rtol=1e-10, atol=1e-10)
        _FLOWS[key] = (x_T, ref)
    x_T, ref = _FLOWS[key]
    return x_T.clone(), ref.clone()


# ----- likelihood checks -----------------------------------------------------------------------------------

LIKELIHOOD_EPS = 1e-5


def exact_check(sde, gm, x, **kw):
    """(error in bits/dim [B], logp [B], nfe) of likelihood.log_likelihood at eps = 1e-5 against the
    analytic log p_eps(x).

    The model's prior N(0, prior_std^2 I) is only close to the true p_T; to test the ODE and the
    divergence alone, the true log p_T(z) replaces the prior term here.
    """
    logp, z, nfe = likelihood.log_likelihood(sde, gm.score_fn(sde), x, eps=LIKELIHOOD_EPS, **kw)
    logp_true_prior = logp - sde.prior_logp(z) + gm.log_prob(z, sde, torch.tensor(sde.T))
    D = x.shape[1]
    return (logp_true_prior - gm.log_prob(x, sde, torch.tensor(LIKELIHOOD_EPS))) / (D * math.log(2)), logp, nfe


# ----- the variance head on Gaussian data (test_variance_head.py, test_vlb_training.py) -------------------

def gaussian_step_truth(sde, t, s, mu, std):
    """For data N(mu, std^2) per dimension: (sigma*^2, v*, the mean's coefficients (m0, m1): mean = m0 + m1 x_t) of the step t -> s."""
    (a_t, g_t), (a_s, g_s) = sde.marginal_coeffs(t), sde.marginal_coeffs(s)
    v_t, v_s = a_t ** 2 * std ** 2 + g_t ** 2, a_s ** 2 * std ** 2 + g_s ** 2
    a = a_t / a_s
    optimal = posterior(sde, t, s).beta * v_s / v_t
    return optimal, learned_range_target(sde, t, s, optimal), (a_s * mu - a * v_s / v_t * a_t * mu, a * v_s / v_t)


class GaussianHead(nn.Module):
    """A network with a variance head that outputs the exact eps* of N(mu, std^2) data and, for a step of
    `grid` from t to the next time, v*; or a trainable v per step (`trainable`)."""

    def __init__(self, sde, grid, mu, std, trainable=False):
        super().__init__()
        self.sde, self.grid, self.mu, self.std, self.learn_variance = sde, grid, mu, std, True
        self.v = nn.Parameter(torch.zeros(len(grid), dtype=F64)) if trainable else None

    def forward(self, x, label):
        t = label.double() / 999
        i = (self.grid - t[:, None]).abs().argmin(1)  # the step that starts at t (the last time: the decoder's)
        a_t, g_t = (c[:, None] for c in self.sde.marginal_coeffs(t))
        eps = g_t * (x.double() - a_t * self.mu) / (a_t ** 2 * self.std ** 2 + g_t ** 2)
        if self.v is not None:
            v = self.v[i][:, None].expand_as(eps)
        else:
            last = i == len(self.grid) - 1  # the decoder's time: v = 0 there (its fixed small variance)
            s = self.grid[(i + 1).clamp(max=len(self.grid) - 1)]
            v_star = gaussian_step_truth(self.sde, t, torch.where(last, t / 2, s), self.mu, self.std)[1]
            v = torch.where(last, 0.0, v_star)[:, None].expand_as(eps)
        return torch.cat([eps, v], 1).to(x.dtype)



def write_idx(root, prefix, images, labels):
    """An IDX pair <prefix>-images-idx3-ubyte.gz / -labels-idx1-ubyte.gz of uint8 images [N, H, W]."""
    n, h, w = images.shape
    with gzip.open(os.path.join(root, f"{prefix}-images-idx3-ubyte.gz"), "wb") as f:
        f.write(struct.pack(">iiii", 2051, n, h, w) + images.astype(np.uint8).tobytes())
    with gzip.open(os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz"), "wb") as f:
        f.write(struct.pack(">ii", 2049, n) + labels.astype(np.uint8).tobytes())


# ----- training ---------------------------------------------------------------------------------------------
# (score_toolkit is imported where used: the research-layer tests import this module without it)

def small_config(**overrides):
    """The swiss-roll VP MLP, small and short: 30 steps of batch 64, checkpoints every 10."""
    from configs.swissroll_vp_mlp import get_config
    from score_toolkit.config_keys import set_keys
    c = get_config()
    c.data.n_train, c.data.n_test = 2000, 300
    c.model.hidden, c.model.num_layers = 32, 2
    t = c.training
    t.batch_size, t.n_iters, t.log_freq, t.checkpoint_freq, t.snapshot_freq = 64, 30, 10, 10, 1000
    c.optim.warmup = 5
    c.sampling.N, c.sampling.n_samples, c.sampling.batch_size = 20, 100, 100
    c.eval.n_nll, c.eval.batch_size, c.eval.n_samples = 100, 50, 100
    return set_keys(c, **overrides)


def final_weights(workdir):
    """(step, state) of the newest checkpoint in workdir/checkpoints."""
    from score_toolkit import checkpoints
    return checkpoints.load_latest(os.path.join(workdir, "checkpoints"))


def assert_same_state(a, b):
    """The model's and the EMA's weights of two checkpoints are equal bit for bit."""
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for x, y in zip(a["ema"]["shadow_params"], b["ema"]["shadow_params"]):
        assert torch.equal(x, y)


# ----- score_sde_pytorch's network layouts (fixtures/score_sde_layouts.json; test_reference_layouts.py) ----

LAYOUTS: Dict[str, dict] = json.loads((Path(__file__).parent / "fixtures" / "score_sde_layouts.json").read_text())
NARROW = [f for f in LAYOUTS if "known_answer" in LAYOUTS[f]]


def reference_params(family: str) -> Dict[str, Tuple[int, ...]]:
    """The reference's {parameter name: shape}, in its `named_parameters()` order."""
    entry = LAYOUTS[family]
    params = entry["params"] if "params" in entry else LAYOUTS[entry["same_params_as"]]["params"]
    return {name: tuple(shape) for name, shape in params.items()}


class ShapesOnly(TorchFunctionMode):
    """Puts new uninitialised, zero, one and random tensors on the meta device, so a network of
    10^8 parameters builds in milliseconds without memory; tensors made from Python data (the FIR
    taps, which the constructors validate by value) stay on the CPU."""

    ALLOCATORS = {torch.empty, torch.empty_strided, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self.ALLOCATORS and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


# ----- main.py in subprocesses: one process, N under torchrun, or N ranks started by hand ----------------
# (each rank with its own arguments, e.g. its own --workdir: nodes that share no filesystem)

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int) -> List[str]:
    """The command that starts main.py: plain python for one process, torch.distributed.run for more."""
    if nproc == 1:
        return [sys.executable, MAIN]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}", MAIN]


def run_main(args: Sequence[str], nproc: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """main.py with `args` on `nproc` processes; asserts that it succeeded."""
    proc = subprocess.run([*torchrun(nproc), *args], capture_output=True, cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return proc


def run_ranks(args_per_rank: Sequence[Sequence[str]], timeout: float = 300) -> List[subprocess.CompletedProcess]:
    """main.py once per rank, rank r with args_per_rank[r], joined into one process group through the
    environment torchrun would set (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK); asserts that
    every rank succeeded. Returns their (returncode, stdout, stderr) as CompletedProcess objects."""
    world, port = len(args_per_rank), free_port()
    procs = []
    try:
        for r, args in enumerate(args_per_rank):
            env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r), LOCAL_RANK=str(r),
                       WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
            procs.append(subprocess.Popen([sys.executable, MAIN, *args], stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, cwd=ROOT, env=env))
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    done = [subprocess.CompletedProcess(p.args, p.returncode, out, err) for p, (out, err) in zip(procs, outs)]
    for r, proc in enumerate(done):
        assert proc.returncode == 0, f"rank {r}: " + proc.stderr.decode()[-3000:]
    return done


def tiny_two_class_images(n: int, seed_rng, size: int = 8):
    """(uint8-valued int images [n, size, size], labels [n]): dark noise with a bright left (class 0) or
    right (class 1) half, for training runs that must learn something in a few steps."""
    labels = seed_rng.integers(0, 2, n)
    images = seed_rng.integers(0, 60, (n, size, size))
    for i, c in enumerate(labels):
        images[i, :, size // 2 * c:size // 2 * (c + 1)] += 180
    return images, labels


def write_tiny_image_set(root, n_train: int, n_test: int, seed: int = 0):
    """`tiny_two_class_images` as an IDX train / test pair under root (made here); returns root."""
    import numpy as np
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root, prefix, *tiny_two_class_images(n, rng))
    return root
