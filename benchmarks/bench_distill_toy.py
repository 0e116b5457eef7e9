"""Distilled students of an exact teacher on a 2-D Gaussian mixture (VP SDE): their error at 1, 2 and 4
network calls beside the best fixed-budget samplers on the exact score at the same calls; prints JSON.

    python benchmarks/bench_distill_toy.py [--pd-steps 1500] [--cd-steps 6000] [--out FILE]

Teacher: the mixture's exact score. Students: point MLPs (v-predicting, hidden 128, 3 blocks) trained
in float32 by `score_toolkit.distillation` on fresh mixture draws each step: progressive distillation
from 64 DDIM steps (uniform-t grid) halved to 1, --pd-steps per halving, truncated-SNR weighting; consistency distillation with
the exact score's Heun step (N = 18, target EMA 0.95) and consistency training (the "improved" N
schedule, pseudo-Huber loss), --cd-steps each. Measures, on 4096 prior draws that training never saw:
  endpoint_error  `samplers.endpoint_error` against the converged flow from the same draw (dopri5,
                  rtol = atol = 1e-8, float64); for deterministic maps only (every sampler here, the
                  progressive students, one-step consistency sampling);
  sliced_w2       the sliced 2-Wasserstein distance (256 directions) to 4096 exact draws of p_eps.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import models  # noqa: E402
import samplers  # noqa: E402
import sde_lib  # noqa: E402
from benchmarks._common import emit, machine  # noqa: E402
from score_toolkit import distillation, training  # noqa: E402

EPS = 1e-3


def mixture() -> sde_lib.GaussianMixture:
    means = [[-2.0, -1.0], [2.0, -1.0], [0.0, 2.0], [0.5, 0.0]]
    covs = [[[0.2, 0.05], [0.05, 0.1]], [[0.1, 0.0], [0.0, 0.3]], [[0.4, -0.1], [-0.1, 0.1]], [[0.05, 0.0], [0.0, 0.05]]]
    return sde_lib.GaussianMixture([0.3, 0.3, 0.3, 0.1], torch.tensor(means), torch.tensor(covs))


def student(sde, seed: int):
    torch.manual_seed(seed)
    net = models.get_model("mlp")(dim=2, hidden=128, num_layers=3)
    return models.Precond(sde, net, "v")


def train(loss, model, steps: int, gm, lr: float, seed: int, milestone=None) -> None:
    """Adam on fresh mixture draws (batch 512), with the loss's hooks, as training.train calls them."""
    net = model.net
    state = SimpleNamespace(model=net, ema=models.ExponentialMovingAverage(net.parameters(), 0.999),
                            optimizer=torch.optim.Adam(net.parameters(), lr=lr), step=0)
    g = torch.Generator().manual_seed(seed)
    while state.step < steps:
        loss.before_step(state)
        x0 = gm.sample(512, g).float()
        value = loss(model, x0, g)
        state.optimizer.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        state.optimizer.step()
        state.ema.update(net.parameters())
        state.step += 1
        name = loss.after_step(state)
        if name and milestone:
            milestone(name, state)
    state.ema.copy_to(net.parameters())


def sliced_w2(x: torch.Tensor, y: torch.Tensor, n_dir: int = 256) -> float:
    d = torch.randn(n_dir, x.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = d / d.norm(dim=1, keepdim=True)
    px, py = (x.double() @ d.T).sort(0)[0], (y.double() @ d.T).sort(0)[0]
    return float((px - py).pow(2).mean().sqrt())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pd-steps", type=int, default=1500)
    p.add_argument("--cd-steps", type=int, default=6000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/distill_toy.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sde, gm = sde_lib.VPSDE(), mixture()
    exact = gm.score_fn(sde)
    x_T = sde.prior_sampling((4096, 2), torch.Generator().manual_seed(123), dtype=torch.float64)
    ref, _ = samplers.solve_flow(sde, exact, x_T, sde.T, EPS, rtol=1e-8, atol=1e-8)
    a, s = (float(v) for v in sde.marginal_coeffs(torch.tensor(EPS, dtype=torch.float64)))
    truth = a * gm.sample(4096, torch.Generator().manual_seed(7)).double() + s * torch.randn(
        4096, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)

    def measure(label, fn, score, calls, deterministic=True, **extra):
        x, nfe = fn(sde, score, (4096, 2), x_T=x_T.float(), seed=5, eps=EPS, **extra)
        row = {"model": label, "calls": nfe, "sliced_w2": round(sliced_w2(x, truth), 4)}
        if deterministic:
            row["endpoint_error"] = round(samplers.endpoint_error(x.double(), ref), 4)
        emit(row, args.out)

    exact32 = lambda x, t: exact(x.double(), t.double()).float()  # noqa: E731
    for calls in (1, 2, 4):
        for name in ("ddim", "dpmpp_2m", "unipc"):
            measure(f"exact_{name}", samplers.get_sampler(name), exact32, calls, steps=calls)
    measure("exact_heun", samplers.heun_sample, exact32, 4, steps=2)

    t0 = time.perf_counter()
    pd = distillation.ProgressiveDistillation(sde, "uniform_t", 64, 1, args.pd_steps, eps=EPS)
    pd.attach(exact32)
    model = student(sde, 0)

    def pd_milestone(name, state):
        n = int(name.split("_")[1])
        if n <= 4:  # the halving's student, with its EMA weights
            with training.ema_weights(state):
                measure(f"pd_{n}", samplers.ddim_sample, model, n, steps=n, grid="uniform_t")

    train(pd, model, pd.total_steps, gm, 1e-3, 1, pd_milestone)
    emit({"trained": "pd", "seconds": round(time.perf_counter() - t0, 1), "steps": pd.total_steps}, args.out)

    for method, kwargs in (("consistency_distillation", dict(schedule="fixed", s1=18, mu0=0.95, solver="heun")),
                           ("consistency_training", dict(schedule="improved", s0=10, s1=320, loss="pseudo_huber",
                                                         weighting="inverse_delta", times="lognormal"))):
        t0 = time.perf_counter()
        cm = models.ConsistencyFunction(student(sde, 2), EPS, sigma_data=1.0)
        loss = distillation.ConsistencyLoss(sde, method, args.cd_steps, EPS, 1.0, **kwargs)
        loss.attach(exact32 if method == "consistency_distillation" else None)
        train(loss, cm, args.cd_steps, gm, 1e-3, 3)
        label = "cd" if method == "consistency_distillation" else "ct"
        emit({"trained": label, "seconds": round(time.perf_counter() - t0, 1), "steps": args.cd_steps}, args.out)
        with torch.no_grad():
            for calls in (1, 2, 4):
                measure(f"{label}_{calls}", samplers.consistency_sample, cm, calls, deterministic=calls == 1,
                        steps=calls, grid="karras")
    emit({"summary": True, "args": vars(args), "machine": machine()}, args.out)


if __name__ == "__main__":
    main()
