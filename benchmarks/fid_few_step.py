"""Classifier-FID of the shipped Fashion-MNIST model per sampler and number of network calls.

    python benchmarks/fid_few_step.py --data-root /usr/share/datasets/fashion-mnist \
        --features workdirs/fmnist_features --n-samples 10000 --budgets 5,10,20,50 --out fid.jsonl

For each sampler and budget B it takes the largest step count whose network calls (final
denoising included) are at most B, draws --n-samples samples from the EMA weights in
`score_toolkit/pretrained/`, and measures FID / KID / IS with the toolkit's Fashion-MNIST classifier
(trained by this script into --features if absent, as `--mode classifier` does, with the training
images' feature statistics beside it). One JSON line per (sampler, budget) goes to --out and stdout,
with the configuration, the machine and the wall time; --time-budget stops starting new runs after
that many seconds, so a long list ends with what it measured. The "_fitted" samplers first fit their
grid for the budget (`samplers.fit_grid`, --fit-pilot draws, --fit-evals sampler runs; its time and
network calls are in the row) and then sample on it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import samplers  # noqa: E402
from configs.fashionmnist_vp_ddpmpp_pretrained import get_config  # noqa: E402
from score_toolkit import data_lib, evaluation, factories, features, runtime  # noqa: E402

# name -> (sampler, fixed keyword arguments). "steps" is chosen per budget.
SAMPLERS = {
    "ddim": ("ddim", {}),
    "dpmpp_2m": ("dpmpp_2m", {}),
    "dpmpp_3m": ("dpmpp_3m", {}),
    "unipc": ("unipc", {}),
    "dpm_solver_3": ("dpm_solver", {"order": 3}),
    "heun": ("heun", {}),
    "ode_rk4": ("ode", {"method": "rk4", "denoise": True}),
    "ode_euler": ("ode", {"method": "euler", "denoise": True}),
    "pc_em": ("pc", {"predictor": "euler_maruyama", "corrector": "none", "denoise": True}),
    "ddim_eta1": ("ddim", {"eta": 1.0}),
    "heun_churn": ("heun", {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}),
    "adaptive": ("adaptive", {}),
    # On a grid fitted to the model for the budget (samplers.fit_grid on --fit-pilot draws of seed 7).
    "unipc_fitted": ("unipc", {"grid": "fitted"}),
    "dpmpp_2m_fitted": ("dpmpp_2m", {"grid": "fitted"}),
}


def probe_nfe(sde, name: str, kwargs: dict, steps) -> int:
    """Network calls of one run with `steps`, counted on a 2-sample batch with a stand-in score."""
    fn = samplers.get_sampler(name)
    args = dict(kwargs)
    if steps is not None:
        args["steps"] = steps
    return fn(sde, lambda x, t: -x, (2, 1, 4, 4), seed=0, **args)[1]


def steps_for_budget(sde, name: str, kwargs: dict, budget: int):
    """The largest step count whose NFE is <= budget (None for samplers that choose their own steps)."""
    if name == "adaptive":
        return None
    for steps in range(budget, 0, -1):
        if probe_nfe(sde, name, kwargs, steps) <= budget:
            return steps
    return None


def draw(sde, score_fn, name, kwargs, steps, n, batch, device):
    """n samples in batches; seed b for batch b, so every sampler starts from the same prior draws."""
    fn, parts, nfe = samplers.get_sampler(name), [], 0
    for b in range((n + batch - 1) // batch):
        args = dict(kwargs, seed=1000 + b, device=device)
        if steps is not None:
            args["steps"] = steps
        x, k = fn(sde, score_fn, (min(batch, n - b * batch), 1, 32, 32), **args)
        parts.append(x.cpu())
        nfe = k
    return torch.cat(parts), nfe


def prepare(args):
    """The config, the data, and the classifier and statistics (trained / computed when absent)."""
    config = get_config()
    config.data.root = args.data_root
    config.eval.feature_extractor = "classifier"
    config.eval.feature_path = os.path.join(args.features, "classifier.pt")
    config.eval.stats_path = os.path.join(args.features, "stats.npz")
    config.device = args.device
    config.eval.classifier_steps = args.classifier_steps
    data = data_lib.load(config)
    if not os.path.exists(config.eval.feature_path):
        features.train_feature_classifier(config, data)
    if not os.path.exists(config.eval.stats_path):
        features.compute_data_stats(config, data)
    return config, data


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--features", default="workdirs/fmnist_features")
    p.add_argument("--n-samples", type=int, default=10000)
    p.add_argument("--batch", type=int, default=2500)
    p.add_argument("--budgets", default="5,10,20,50")
    p.add_argument("--samplers", default="ddim,dpmpp_2m,heun,ode_rk4")
    p.add_argument("--extra", default="", help="name:budget pairs run after the grid, e.g. heun_churn:100")
    p.add_argument("--classifier-steps", type=int, default=3000, help="as config.eval.classifier_steps")
    p.add_argument("--device", default="auto")
    p.add_argument("--time-budget", type=float, default=1e9)
    p.add_argument("--fit-pilot", type=int, default=1024, help="pilot draws of the _fitted samplers' grid fit")
    p.add_argument("--fit-evals", type=int, default=0, help="their sampler runs at most (0: 100 per step)")
    p.add_argument("--out", default="fid.jsonl")
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # sampling, not likelihood
    t_start = time.perf_counter()
    config, data = prepare(args)
    sde, device = factories.build_sde(config), runtime.get_device(config)
    model, step = evaluation.load_ema_model(config, "unused: weights_path is set")
    score_fn = factories.build_precond(config, sde, model.to(device))
    quality = features.quality_fn(config)
    runs = [(s, int(b)) for b in args.budgets.split(",") for s in args.samplers.split(",")]
    runs += [(e.split(":")[0], int(e.split(":")[1])) for e in args.extra.split(",") if e]
    machine = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
               "torch": torch.__version__}
    print(json.dumps({"setup_s": round(time.perf_counter() - t_start, 1), **machine}), flush=True)
    for label, budget in runs:
        if time.perf_counter() - t_start > args.time_budget:
            print(json.dumps({"sampler": label, "budget": budget, "skipped": "time budget"}), flush=True)
            continue
        name, kwargs = SAMPLERS[label]
        plain = {k: v for k, v in kwargs.items() if k != "grid"}  # "fitted" is no grid to probe NFE with
        steps = steps_for_budget(sde, name, plain, budget)
        fit = {}
        if kwargs.get("grid") == "fitted":
            t0 = time.perf_counter()
            grid, info = samplers.fit_grid(sde, score_fn, (args.fit_pilot, 1, 32, 32), steps=steps, sampler=name,
                                           max_evals=args.fit_evals or None, seed=7, device=device)
            kwargs = dict(kwargs, grid=grid)
            fit = {"fit_s": round(time.perf_counter() - t0, 1), **info,
                   "fitted_times": [round(v, 6) for v in grid.tolist()]}
        t0 = time.perf_counter()
        x, nfe = draw(sde, score_fn, name, kwargs, steps, args.n_samples, args.batch, device)
        row = {"sampler": label, "method": name, "kwargs": plain,
               **fit, "budget": budget, "steps": steps, "nfe": nfe,
               "n_samples": len(x), "sample_s": round(time.perf_counter() - t0, 1),
               **quality(data.to_uint8(x)), "checkpoint_step": step, **machine}
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
