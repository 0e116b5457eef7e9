"""Sample quality per score call (NFE) for every registered sampler; prints JSON, a table to stderr, a plot.

Error (the toolkit's quality measure): RMS over samples of ||x - x_ref|| / sqrt(tr Cov(p_0)), where
x_ref is the probability-flow ODE's endpoint at eps from the same prior draw x_T (dopri5 at
rtol = atol = 1e-10; float64 and the exact score throughout). It measures how far a sampler is from
the flow's own map, which a stochastic sampler does not follow by design; so every run also gets an
exact-distribution measure, `sw1`: the sliced Wasserstein-1 distance between the samples and the
exact marginal p_eps (alpha(eps) x_0 + sigma(eps) z, 100,000 draws), the mean over 64 fixed random
unit directions u of W1(u.x, u.x_exact) from quantiles, divided by sqrt(tr Cov(p_0) / D).
`sw1_floor` is the same measure for exact draws of the same size: the sampling noise below which
sw1 says nothing.

Problems: the 2-D two-component mixture and a 16-D three-component mixture (the test suite's
`mixture_2d()` and `random_mixture(16)`, copied here), each with VESDE() and VPSDE(), eps = the SDE's
sampling_eps. For each sampler and NFE budget, the largest step count whose real NFE fits the
budget (found by running the sampler on two samples); samplers with a tolerance instead of steps
(rtol in their signature) run a tolerance sweep and each budget takes the sweep point with the most
NFE within it. Every sampler runs on its default grid, and the deterministic fixed-step ones (the
ODE solvers) also on "karras" and "uniform_log_snr" (a grid whose samples equal the default's is
listed once). A sampler is called stochastic when two seeds give different samples from one x_T.
The multistep samplers of FIT_SAMPLERS also run on a grid fitted to the problem for each budget up
to 20 calls (`samplers.fit_grid`: 1,000 pilot draws of another seed, its default evaluation budget);
their rows give the fit's cost (seconds, network calls on the pilot batch) beside each point.

    python benchmarks/bench_quality.py [--quick] [--plot PATH] [--kdiffusion [PATH]]

--kdiffusion also runs k-diffusion's samplers on the 2-D VE problem (a denoiser
x + sigma^2 score(x, t(sigma)) on the Karras grid get_sigmas_karras(n, sigma(eps), 50, rho=7) with
the final 0 dropped, so it ends at our last sigma): it loads k_diffusion/sampling.py from PATH or
from an installed k-diffusion, without importing the rest of that package, and only when asked.
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import math
import os
import sys
import time
import types

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import samplers  # noqa: E402
import sde_lib  # noqa: E402
from sde_lib.analytic import GaussianMixture  # noqa: E402
from benchmarks._common import machine  # noqa: E402

TOLERANCES = {  # sweeps of the samplers that take a tolerance instead of steps: (rtol, atol) pairs
    "ode": [(t, t) for t in (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)],
    "adaptive": [(t, t / 5) for t in (2.0, 1.0, 0.5, 0.3, 0.2, 0.1, 0.05)],
}
DEFAULT_SWEEP = [(t, t) for t in (1e-1, 1e-2, 1e-3)]
VARIANTS = {"heun": [{"s_churn": 10.0}], "ddim": [{"eta": 1.0}]}  # stochastic variants worth a row
EXTRA_GRIDS = ("karras", "uniform_log_snr")
FIT_SAMPLERS, FIT_MAX_BUDGET, FIT_PILOT_SEED = ("unipc", "dpmpp_2m"), 20, 1000
GOALS_2D_VE = [(10, 0.033), (20, 0.014)]  # (NFE, error) the project aims for on the 2-D VE mixture


def mixture_2d():
    """Two well-separated 2-D components with different weights and anisotropic stds."""
    return GaussianMixture([0.3, 0.7], [[-2.0, 0.0], [2.0, 1.0]], [[0.25, 0.16], [0.09, 0.12]])


def random_mixture(dim: int, k: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, dim, generator=g) * 1.5
    A = torch.randn(k, dim, dim, generator=g) * 0.3
    covs = A @ A.transpose(1, 2) + 0.1 * torch.eye(dim)
    return GaussianMixture(torch.linspace(1, 2, k), means, covs)


PROBLEMS = {"2d/ve": (mixture_2d, sde_lib.VESDE), "2d/vp": (mixture_2d, sde_lib.VPSDE),
            "16d/ve": (lambda: random_mixture(16), sde_lib.VESDE),
            "16d/vp": (lambda: random_mixture(16), sde_lib.VPSDE)}


class Problem:
    """Data, SDE, prior draws x_T [n, D], their flow endpoints x_ref, and the exact-distribution measure."""

    def __init__(self, name: str, n: int, n_exact: int):
        make_gm, make_sde = PROBLEMS[name]
        self.name, self.gm, self.sde = name, make_gm(), make_sde()
        self.eps, self.score, D = self.sde.sampling_eps, self.gm.score_fn(self.sde), self.gm.dim
        w, mu = self.gm.weights, self.gm.means
        mean = w @ mu
        cov = (w[:, None, None] * (self.gm.covs + mu[:, :, None] * mu[:, None, :])).sum(0) - torch.outer(mean, mean)
        self.spread = float(cov.trace().sqrt())
        self.x_T = self.sde.prior_sampling((n, D), torch.Generator().manual_seed(0), dtype=torch.float64)
        t0 = time.perf_counter()
        self.x_ref, self.ref_nfe = samplers.solve_flow(self.sde, self.score, self.x_T, self.sde.T, self.eps,
                                                       rtol=1e-10, atol=1e-10)
        self.ref_s = time.perf_counter() - t0
        g = torch.Generator().manual_seed(1)
        u = torch.randn(64, D, generator=g, dtype=torch.float64)
        self.dirs = u / u.norm(dim=1, keepdim=True)
        self.exact = (self.marginal_draws(n_exact, g) @ self.dirs.T).sort(0).values
        self.sw1_floor = self.sw1(self.marginal_draws(n, g))

    def marginal_draws(self, n: int, g: torch.Generator):
        """n draws of p_eps: alpha(eps) x_0 + sigma(eps) z."""
        alpha, sigma = (float(c) for c in self.sde.marginal_coeffs(torch.tensor(self.eps, dtype=torch.float64)))
        z = torch.randn(n, self.gm.dim, generator=g, dtype=torch.float64)
        return alpha * self.gm.sample(n, g).double() + sigma * z

    def error(self, x) -> float:
        return float((x - self.x_ref).pow(2).sum(1).mean().sqrt()) / self.spread

    def sw1(self, x) -> float:
        px = (x.double() @ self.dirs.T).sort(0).values
        # The exact projections' quantiles at (i + 1/2) / n, interpolated linearly between order statistics.
        pos = ((torch.arange(len(x), dtype=torch.float64) + 0.5) / len(x) * (len(self.exact) - 1))
        lo, frac = pos.floor().long(), (pos - pos.floor())[:, None]
        quantiles = self.exact[lo] * (1 - frac) + self.exact[(lo + 1).clamp(max=len(self.exact) - 1)] * frac
        w1 = (px - quantiles).abs().mean()
        return float(w1) / (self.spread / math.sqrt(self.gm.dim))


def call(p: Problem, fn, x_T, seed=0, **kw):
    """One sampler run from x_T in float64; returns (samples, nfe, wall seconds)."""
    t0 = time.perf_counter()
    x, nfe = fn(p.sde, p.score, x_T.shape, x_T=x_T, seed=seed, dtype=torch.float64, **kw)
    return x, nfe, time.perf_counter() - t0


def steps_for_budgets(p: Problem, fn, kw: dict, budgets) -> dict:
    """{budget: (steps, nfe)}: the largest step count whose NFE fits each budget, probed on 2 samples."""
    nfe_of, steps = {}, 1
    while steps <= max(budgets) + 1:
        try:
            nfe = call(p, fn, p.x_T[:2], steps=steps, **kw)[1]
        except ValueError:  # e.g. too few steps for a method's order
            steps += 1
            continue
        if nfe > max(budgets):
            break
        nfe_of[steps] = nfe
        steps += 1
    out = {}
    for b in budgets:
        fit = [s for s, n in nfe_of.items() if n <= b]
        if fit:
            out[b] = (max(fit), nfe_of[max(fit)])
    return out


def is_stochastic(p: Problem, fn, kw: dict) -> bool:
    a = call(p, fn, p.x_T[:8], seed=0, **kw)[0]
    return not torch.equal(a, call(p, fn, p.x_T[:8], seed=1, **kw)[0])


def point(p: Problem, fn, kw: dict, budget=None) -> dict:
    try:
        x, nfe, wall = call(p, fn, p.x_T, **kw)
    except (ValueError, RuntimeError, FloatingPointError) as e:
        return {"budget": budget, **kw, "failed": f"{type(e).__name__}: {e}"}
    return {"budget": budget, **kw, "nfe": nfe, "error": round(p.error(x), 6), "sw1": round(p.sw1(x), 5),
            "wall_s": round(wall, 3)}


def plan_of(p: Problem, name: str, kw: dict, budgets, cache: dict):
    """(`steps_for_budgets`, is_stochastic) of sampler `name` with options kw, probed once per run:
    NFE per step count and stochasticity do not depend on the problem."""
    key = (name, json.dumps(kw, sort_keys=True))
    if key not in cache:
        fn = samplers.get_sampler(name)
        plan = steps_for_budgets(p, fn, kw, budgets)
        cache[key] = plan, bool(plan) and is_stochastic(p, fn, {**kw, "steps": max(plan.values())[0]})
    return cache[key]


def run_stepped(p: Problem, name: str, kw: dict, budgets, cache: dict) -> list:
    """Rows for a fixed-step sampler: its default grid, and the extra grids if it is deterministic."""
    fn = samplers.get_sampler(name)
    plan, stochastic = plan_of(p, name, kw, budgets, cache)
    if not plan:
        return [{"sampler": name, "grid": "default", "kwargs": kw, "stochastic": None, "points": []}]
    rows, seen = [], {}
    for grid in (None,) + (() if stochastic else EXTRA_GRIDS):
        probe = call(p, fn, p.x_T[:8], steps=max(plan.values())[0], grid=grid, **kw)[0]
        same = next((g for g, x in seen.items() if torch.allclose(x, probe, rtol=1e-9, atol=1e-12)), None)
        if same is not None:  # the default grid is this one: one row, named by both
            next(r for r in rows if r["grid"] == same)["grid"] = f"{same} (= {grid})"
            continue
        seen[grid or "default"] = probe
        pts = []
        for b, (steps, _) in plan.items():
            prev = next((q for q in pts if q.get("steps") == steps), None)
            pts.append({**prev, "budget": b} if prev else point(p, fn, {"steps": steps, "grid": grid, **kw}, b))
        for q in pts:
            q.pop("grid", None)
        rows.append({"sampler": name, "grid": grid or "default", "kwargs": kw, "stochastic": stochastic,
                     "points": pts})
    return rows


def run_fitted(p: Problem, name: str, budgets, n_pilot: int, cache: dict) -> list:
    """Rows for `name` on grids fitted by samplers.fit_grid on n_pilot other draws, one per budget."""
    fn, pts = samplers.get_sampler(name), []
    plan = {b: v for b, v in plan_of(p, name, {}, budgets, cache)[0].items() if b <= FIT_MAX_BUDGET}
    for b, (steps, _) in plan.items():
        t0 = time.perf_counter()
        grid, info = samplers.fit_grid(p.sde, p.score, (n_pilot, p.gm.dim), steps=steps, sampler=name,
                                       seed=FIT_PILOT_SEED, dtype=torch.float64)
        fit = {"fit_s": round(time.perf_counter() - t0, 1), "fit_network_calls": info["network_calls"],
               "pilot_error_initial": round(info["pilot_error_initial"], 6),
               "pilot_error": round(info["pilot_error"], 6), "sigmas": [round(float(v), 4) for v in
                                                                       p.sde.marginal_coeffs(grid)[1]]}
        pts.append({**point(p, fn, {"steps": steps, "grid": grid}, b), **fit})
        pts[-1].pop("grid")
    return [{"sampler": name, "grid": f"fitted ({n_pilot} pilot draws)", "kwargs": {}, "stochastic": False,
             "points": pts}]


def goals(rows: list) -> list:
    """The best deterministic error within each GOALS_2D_VE budget, and whether it meets the goal."""
    out = []
    for nfe, goal in GOALS_2D_VE:
        pts = [(q["error"], f"{r['sampler']} [{r['grid']}]") for r in rows if not r["stochastic"]
               for q in r["points"] if "error" in q and q["nfe"] <= nfe]
        best = min(pts) if pts else (None, None)
        out.append({"nfe": nfe, "goal": goal, "best": best[0], "by": best[1], "met": best[0] is not None and best[0] <= goal})
    return out


def run_tolerance(p: Problem, name: str, budgets) -> list:
    """A tolerance sweep; each budget takes the sweep point with the most NFE within it."""
    fn = samplers.get_sampler(name)
    sweep = [point(p, fn, {"rtol": r, "atol": a}) for r, a in TOLERANCES.get(name, DEFAULT_SWEEP)]
    pts = []
    for b in budgets:
        fit = [q for q in sweep if "nfe" in q and q["nfe"] <= b]
        if fit:
            pts.append({**max(fit, key=lambda q: q["nfe"]), "budget": b})
    stochastic = is_stochastic(p, fn, {"rtol": 0.5, "atol": 0.5})
    return [{"sampler": name, "grid": "adaptive", "kwargs": {}, "stochastic": stochastic,
             "points": pts, "sweep": sweep}]


def kdiffusion_rows(p: Problem, path: str, budgets) -> list:
    """k-diffusion's deterministic samplers and Heun on the same prior draws (VE only)."""
    ks = load_kdiffusion(path)
    sigma_min = float(p.sde.marginal_coeffs(torch.tensor(p.eps, dtype=torch.float64))[1])
    calls = [0]

    def denoiser(x, sigma):
        calls[0] += 1
        t = p.sde.t_from_sigma(sigma.double())
        return x + sigma[:, None] ** 2 * p.score(x, t)

    def run(sample, steps, x_T):
        sigmas = ks.get_sigmas_karras(steps + 1, sigma_min, p.sde.sigma_max, rho=7.0)[:-1].double()
        calls[0] = 0
        return sample(denoiser, x_T.clone(), sigmas, disable=True), calls[0]

    rows = []
    for name in ("sample_euler", "sample_heun", "sample_dpm_2", "sample_lms", "sample_dpmpp_2m"):
        sample, pts = getattr(ks, name), []
        nfe_of = {s: run(sample, s, p.x_T[:2])[1] for s in range(1, max(budgets) + 1)}
        for b in budgets:
            fit = [s for s, n in nfe_of.items() if n <= b]
            if fit:
                x, nfe = run(sample, max(fit), p.x_T)
                pts.append({"budget": b, "steps": max(fit), "nfe": nfe, "error": round(p.error(x), 6),
                            "sw1": round(p.sw1(x), 5)})
        rows.append({"sampler": f"k-diffusion {name}", "grid": "karras rho 7", "kwargs": {}, "stochastic": False,
                     "points": pts})
    return rows


def load_kdiffusion(path: str):
    """k_diffusion/sampling.py as a module, with a stub of the one helper it takes from its package."""
    if not path:
        spec = importlib.util.find_spec("k_diffusion")  # finds the package without importing it
        if spec is None:
            raise SystemExit("--kdiffusion: k-diffusion is not installed; pass the path of its sampling.py")
        path = os.path.join(spec.submodule_search_locations[0], "sampling.py")
    pkg = types.ModuleType("_kd")
    pkg.__path__ = []
    utils = types.ModuleType("_kd.utils")
    utils.append_dims = lambda v, n: v[(...,) + (None,) * (n - v.ndim)]
    pkg.utils = utils
    sys.modules.update({"_kd": pkg, "_kd.utils": utils})
    spec = importlib.util.spec_from_file_location("_kd.sampling", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def table(results: dict, budgets) -> str:
    lines = []
    for name, res in results.items():
        lines.append(f"\n{name}: error vs the ODE from the same x_T (nfe); stochastic rows add sw1 "
                     f"[floor {res['sw1_floor']:.3f}]")
        lines.append(f"{'sampler':<26}{'grid':<24}" + "".join(f"{'<=' + str(b):>25}" for b in budgets))
        for r in res["rows"]:
            cells = {q["budget"]: q for q in r["points"]}
            label = r["sampler"] + "".join(f" {k}={v}" for k, v in r["kwargs"].items())

            def cell(q):
                if q is None or "error" not in q:
                    return "-" if q is None else "failed"
                s = f"{q['error']:.4f} ({q['nfe']})"
                return s + f" sw1 {q['sw1']:.3f}" if r["stochastic"] else s
            cells_text = "".join(f"{cell(cells.get(b)):>25}" for b in budgets)
            lines.append(f"{label[:25]:<26}{r['grid'][:23]:<24}" + cells_text)
    return "\n".join(lines)


def plot(results: dict, path: str) -> None:
    """Error vs NFE, log-log, one panel per problem; stochastic rows (dashed) plot sw1 instead."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = (len(results) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(15, 5 * rows), squeeze=False)
    colors, legend = {}, {}
    palette = plt.cm.tab20.colors + plt.cm.tab20b.colors
    for ax, (name, res) in zip(axes.flat, results.items()):
        for r in res["rows"]:
            key = "sw1" if r["stochastic"] else "error"
            pts = sorted((q for q in r.get("sweep", r["points"]) if q.get(key, 0) > 0), key=lambda q: q["nfe"])
            label = r["sampler"] + "".join(f" {k}={v}" for k, v in r["kwargs"].items()) + f" [{r['grid']}]"
            label += " (sw1)" if r["stochastic"] else ""
            color = colors.setdefault(label, palette[len(colors) % len(palette)])  # one colour per row everywhere
            legend[label], = ax.plot([q["nfe"] for q in pts], [q[key] for q in pts], "--x" if r["stochastic"] else "-o",
                                     ms=3, lw=1, color=color)
        legend["sw1 of exact draws (noise floor)"] = ax.axhline(res["sw1_floor"], color="grey", ls=":", lw=1)
        if name == "2d/ve":
            legend["goal (2d/ve)"], = ax.plot(*zip(*GOALS_2D_VE), "k*", ms=12)
        ax.set(xscale="log", yscale="log", xlabel="NFE (score calls)", title=f"{name}: {res['data']}, {res['sde']}",
               ylabel="error vs converged ODE (solid) / sw1 vs exact (dashed)")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(results):]:
        ax.set_visible(False)
    fig.legend(list(legend.values()), list(legend), loc="center right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.78, 1))
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="500 samples, budgets 5, 10, 20")
    p.add_argument("--n", type=int, default=None, help="samples per problem (default 2000; quick 500)")
    p.add_argument("--budgets", type=int, nargs="+", default=None, help="NFE budgets (default 3 5 10 20 50)")
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    p.add_argument("--plot", default=os.path.join(os.path.dirname(__file__), "quality_per_nfe.png"))
    p.add_argument("--kdiffusion", nargs="?", const="", default=None, metavar="SAMPLING_PY",
                   help="also run k-diffusion's samplers on 2d/ve (path of its sampling.py, or an installed one)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the exact score's small ops run best on 1)")
    p.add_argument("--no-fit", action="store_true", help="skip the fitted-grid rows (the slowest part)")
    args = p.parse_args()
    args.n = args.n or (500 if args.quick else 2000)
    args.budgets = args.budgets or ([5, 10, 20] if args.quick else [3, 5, 10, 20, 50])
    torch.set_num_threads(args.threads)
    results, cache = {}, {}
    for name in args.problems:
        prob = Problem(name, args.n, 20_000 if args.quick else 100_000)
        rows = []
        for s in samplers.list_samplers():
            if "rtol" in inspect.signature(samplers.get_sampler(s)).parameters:
                rows += run_tolerance(prob, s, args.budgets)
                continue
            params = inspect.signature(samplers.get_sampler(s)).parameters
            for kw in [{}] + [v for v in VARIANTS.get(s, []) if set(v) <= set(params)]:
                rows += run_stepped(prob, s, kw, args.budgets, cache)
        if not args.no_fit:
            for s in FIT_SAMPLERS:
                rows += run_fitted(prob, s, args.budgets, 500 if args.quick else 1000, cache)
        if args.kdiffusion is not None and name == "2d/ve":
            rows += kdiffusion_rows(prob, args.kdiffusion, args.budgets)
        results[name] = {"data": f"{prob.gm.dim}-D mixture of {len(prob.gm.weights)}", "sde": type(prob.sde).__name__,
                         "eps": prob.eps, "spread": prob.spread, "reference_nfe": prob.ref_nfe,
                         "reference_s": round(prob.ref_s, 2), "sw1_floor": round(prob.sw1_floor, 5), "rows": rows}
        if name == "2d/ve":
            results[name]["goals"] = goals(rows)
        print(f"{name} done", file=sys.stderr)
    print(table(results, args.budgets), file=sys.stderr)
    for g in results.get("2d/ve", {}).get("goals", []):
        print(f"2d/ve goal <= {g['goal']} at <= {g['nfe']} NFE: best {g['best']} by {g['by']}: "
              f"{'met' if g['met'] else 'MISSED'}", file=sys.stderr)
    if args.plot:
        plot(results, args.plot)
    config = {**vars(args), "samplers": samplers.list_samplers(), "reference": "dopri5 rtol=atol=1e-10",
              "dtype": "float64", "score": "exact"}
    print(json.dumps({"benchmark": "quality_per_nfe", "machine": machine(), "torch": torch.__version__,
                      "config": config, "problems": results}, indent=1))


if __name__ == "__main__":
    main()
