"""Guidance: class-conditional scores built from other scores, usable with every sampler.

Classifier-free guidance (Ho & Salimans 2022) mixes the conditional and the unconditional score of
one network trained with label dropout (the "null" label stands for no label):

    s_w(x, t, y) = (1 + w) s(x, t, y) - w s(x, t, null) = s(x, t, y) + w (s(x, t, y) - s(x, t, null)),

the score of p_t(x | y)^(1+w) / p_t(x)^w, which is proportional to p_t(x) p_t(y | x)^(1+w): w = 0
samples p(x | y), w > 0 sharpens the class at the cost of diversity.

Classifier guidance (Dhariwal & Nichol 2021) adds the gradient of a noise-conditional classifier
p(y | x_t, t) to an unconditional score:

    s_c(x, t, y) = s(x, t) + c grad_x log p(y | x, t).

By Bayes, grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x), so c = 1 with the exact
classifier gives the exact class-conditional score; c > 1 sharpens the class.

Both return a `score_fn(x, t, y, **cond)`: pass the labels to any sampler as `y=labels` (int64 [B]).
Samplers run without autograd; the classifier's gradient turns it on inside with `torch.enable_grad()`.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from samplers.guards import check_cond

Tensor = torch.Tensor
__all__ = ["cfg_score", "classifier_guided_score", "classifier_gradient", "check_labels"]


def _check_scale(value, name: str) -> float:
    """`value` as a float if it is a finite number >= 0 (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_labels(y, batch: int, num_classes: Optional[int], what: str = "") -> Tensor:
    """`y` as an integer tensor [batch] if every label lies in [0, num_classes); else ValueError
    naming `y`, the first bad value and what is allowed (`what` adds to the allowed range)."""
    allowed = f"integer class labels in [0, {num_classes or 'K'}){what}, one per sample (shape [{batch}])"
    if y is None:
        raise ValueError(f"y is required: pass {allowed} to the sampler as y=labels")
    if not torch.is_tensor(y) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"y must be {allowed}; got {type(y).__name__ if not torch.is_tensor(y) else y.dtype}")
    if tuple(y.shape) != (batch,):
        raise ValueError(f"y must be {allowed}; got shape {tuple(y.shape)}")
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"y must be {allowed}; got y[{i}] = {int(y[i])}")
    return y


def _twice(v, batch: int):
    """A per-sample tensor [batch, ...] stacked on itself [2 batch, ...]; anything else unchanged."""
    if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == batch:
        return torch.cat([v, v])
    return v


def cfg_score(score_fn: Callable[..., Tensor], guidance_scale: float, null_label: int) -> Callable[..., Tensor]:
    """Classifier-free guidance: score_fn'(x, t, y, **cond) = (1 + w) s(x, t, y) - w s(x, t, null_label).

    Args:
      score_fn: a class-conditional score s(x, t, y=labels, **cond), trained with label dropout so
        that y = null_label gives the unconditional score.
      guidance_scale: w >= 0; w = 0 is the plain conditional score (one un-doubled call).
      null_label: the unconditional label (the number of classes K for networks here).
    Each call of score_fn' is ONE call of score_fn on the doubled batch [x; x] with labels [y; null]
    (per-sample tensors in `cond`, those whose first dimension is B, are doubled too). Labels are
    checked against [0, null_label) before the network sees them, whenever a new label tensor arrives.
    """
    w = _check_scale(guidance_scale, "guidance_scale")
    if isinstance(null_label, bool) or not isinstance(null_label, int) or null_label < 1:
        raise ValueError(f"null_label must be an int >= 1 (the number of classes), got {null_label!r}")
    checked = [None]  # the last label tensor that passed the check (samplers bind one for a whole run)

    def guided(x: Tensor, t: Tensor, y: Optional[Tensor] = None, **cond) -> Tensor:
        B = x.shape[0]
        if y is None or y is not checked[0]:
            check_labels(y, B, null_label, f" (the null label {null_label} is added by the guidance)")
            check_cond(score_fn, {"y": y, **cond})
            checked[0] = y
        if w == 0:
            return score_fn(x, t, y=y, **cond)
        # One network call on the doubled batch: the conditional half, then the unconditional one.
        null = torch.full_like(y, null_label)
        both = score_fn(torch.cat([x, x]), _twice(t, B), y=torch.cat([y, null]),
                        **{k: _twice(v, B) for k, v in cond.items()})
        s_y, s_null = both[:B], both[B:]
        return s_y + w * (s_y - s_null)  # = (1 + w) s_y - w s_null

    guided.guidance_scale, guided.null_label = w, null_label
    return guided


def classifier_gradient(classifier_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor, y: Tensor,
                        labels_checked: bool = False) -> Tensor:
    """grad_x log p(y | x, t) [shaped like x], with p = softmax(classifier_fn(x, t)) over K classes.

    By autograd on a detached copy of x, with gradients on even inside a sampler's no_grad. The
    per-sample log-probabilities are summed before the backward pass: each sample's logits depend on
    its own x only (a classifier in eval mode), so the sum's gradient is the per-sample gradients.
    Unless `labels_checked`, y is checked against the logits' width K before the backward pass.
    """
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        logits = classifier_fn(x_in, t)
        if not labels_checked:
            check_labels(y, x.shape[0], logits.shape[-1])
        log_p = torch.log_softmax(logits, dim=-1).gather(-1, y.to(logits.device)[:, None]).sum()
        (grad,) = torch.autograd.grad(log_p, x_in)
    return grad


def classifier_guided_score(score_fn: Callable[..., Tensor], classifier_fn: Callable[[Tensor, Tensor], Tensor],
                            scale: float, num_classes: Optional[int] = None) -> Callable[..., Tensor]:
    """Classifier guidance: score_fn'(x, t, y, **cond) = s(x, t, **cond) + scale * grad_x log p(y | x, t).

    Args:
      score_fn: an unconditional score s(x, t, **cond) (y is not passed to it).
      classifier_fn: a noise-conditional classifier, classifier_fn(x, t) -> logits [B, K]
        (e.g. `score_toolkit.noisy_classifier.classifier_logits_fn`, or an exact log-posterior).
      scale: c >= 0; c = 1 with the exact classifier gives the exact class-conditional score.
      num_classes: K, to check labels before any network call; default `classifier_fn.num_classes`
        where it has one, else labels are checked against the logits' width, before the score call.
    Costs one score call, one classifier forward and one backward per call.
    """
    scale = _check_scale(scale, "scale")
    K = num_classes if num_classes is not None else getattr(classifier_fn, "num_classes", None)
    if K is not None and (isinstance(K, bool) or not isinstance(K, int) or K < 1):
        raise ValueError(f"num_classes must be a positive integer, got {K!r}")
    checked = [None]

    def guided(x: Tensor, t: Tensor, y: Optional[Tensor] = None, **cond) -> Tensor:
        if y is None or y is not checked[0]:
            if y is None or K is not None:
                check_labels(y, x.shape[0], K)
            check_cond(score_fn, cond)
            checked[0] = y
        if scale == 0:
            return score_fn(x, t, **cond)
        grad = classifier_gradient(classifier_fn, x, t, y, labels_checked=K is not None)
        return score_fn(x, t, **cond) + scale * grad.to(x.dtype)

    guided.scale = scale
    return guided
