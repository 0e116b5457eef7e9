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

Both return a `score_fn(x, t, y, **cond)`: pass the labels to any sampler as `cond={"y": labels}` (int64 [B]).
Samplers run without autograd; the classifier's gradient turns it on inside with `torch.enable_grad()`.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from sde_lib.checks import check_labels, check_nonnegative, cond_keys

Tensor = torch.Tensor
__all__ = ["cfg_score", "classifier_guided_score", "classifier_gradient", "low_res_cfg_score", "caption_cfg_score"]


def _twice(v: Optional[Tensor]) -> Optional[Tensor]:
    """A per-sample tensor [B, ...] stacked on itself [2 B, ...] (None stays None)."""
    return None if v is None else torch.cat([v, v])


def _mix(score_fn: Callable[..., Tensor], x: Tensor, t, w: float, **doubled) -> Tensor:
    """(1 + w) s_c - w s_null from ONE call of score_fn on [x; x] whose conditioning `doubled` (each
    [2 B, ...]) makes the first half conditional and the second unconditional."""
    B = x.shape[0]
    t2 = torch.cat([t, t]) if torch.is_tensor(t) and t.ndim else t
    both = score_fn(torch.cat([x, x]), t2, **doubled)
    s_c, s_null = both[:B], both[B:]
    return s_c + w * (s_c - s_null)  # = (1 + w) s_c - w s_null


def _with_y(keys: Optional[tuple], fn_name: str = "", needs_y: bool = False) -> Optional[tuple]:
    """The conditioning a guided score takes: y and the rest of what the guided score_fn takes (which must
    take y itself when `needs_y`: classifier-free guidance)."""
    if keys is None:
        return None
    if needs_y and "y" not in keys:
        raise ValueError(f"classifier-free guidance needs a class-conditional score_fn, but {fn_name} takes "
                         f"{sorted(keys) or 'no conditioning'} (no y)")
    return ("y",) + tuple(k for k in keys if k != "y")


def cfg_score(score_fn: Callable[..., Tensor], guidance_scale: float, null_label: int) -> Callable[..., Tensor]:
    """Classifier-free guidance: score_fn'(x, t, y, **cond) = (1 + w) s(x, t, y) - w s(x, t, null_label).

    Args:
      score_fn: a class-conditional score s(x, t, y=labels, **cond), trained with label dropout so
        that y = null_label gives the unconditional score.
      guidance_scale: w >= 0; w = 0 is the plain conditional score (one un-doubled call).
      null_label: the unconditional label (the number of classes K for networks here).
    Each call of score_fn' is ONE call of score_fn on the doubled batch [x; x] with labels [y; null]
    (the other conditioning tensors, [B, ...] each, are doubled too). Labels are checked against
    [0, null_label) before the network sees them, whenever a new label tensor arrives.
    """
    w = check_nonnegative(guidance_scale, "guidance_scale")
    if isinstance(null_label, bool) or not isinstance(null_label, int) or null_label < 1:
        raise ValueError(f"null_label must be an int >= 1 (the number of classes), got {null_label!r}")
    checked = [None]  # the last label tensor that passed the check (samplers bind one for a whole run)

    def guided(x: Tensor, t: Tensor, y: Optional[Tensor] = None, **cond) -> Tensor:
        B = x.shape[0]
        if y is None or y is not checked[0]:
            check_labels(y, B, null_label, f" (the null label {null_label} is added by the guidance)")
            checked[0] = y
        if w == 0:
            return score_fn(x, t, y=y, **cond)
        return _mix(score_fn, x, t, w, y=torch.cat([y, torch.full_like(y, null_label)]),
                    **{k: _twice(v) for k, v in cond.items()})

    guided.guidance_scale, guided.null_label = w, null_label
    guided.cond_keys = _with_y(cond_keys(score_fn), getattr(score_fn, "__name__", type(score_fn).__name__), True)
    return guided


def low_res_cfg_score(score_fn: Callable[..., Tensor], guidance_scale: float) -> Callable[..., Tensor]:
    """Classifier-free guidance on a super-resolution model's low resolution z:
    score_fn'(x, t, low_res=z, **cond) = (1 + w) s(x, t, z) - w s(x, t, null), with the null (dropped)
    low resolution of a network trained with model.sr_p_uncond > 0 (`models.super_resolution`).

    Each call is ONE call of score_fn on the doubled batch [x; x] with low_res [z; z] and low_res_null
    [False; True]; every other conditioning tensor (a class label y included, which is kept) is doubled.
    w = 0 is the plain conditional score (one un-doubled call).
    """
    return _dropped_input_cfg(score_fn, guidance_scale, "low_res", "low-resolution", "a super-resolution score_fn")


def caption_cfg_score(score_fn: Callable[..., Tensor], guidance_scale: float) -> Callable[..., Tensor]:
    """Classifier-free guidance on a caption: score_fn'(x, t, tokens=c, tokens_mask=m, **cond) =
    (1 + w) s(x, t, c) - w s(x, t, the null caption), for a text-conditioned network trained with caption
    dropout (`models.text_encoder.ContextConditionedNet`, whose tokens_null [B] bool selects the null
    caption). One call of score_fn on the doubled batch, as `low_res_cfg_score`."""
    return _dropped_input_cfg(score_fn, guidance_scale, "tokens", "caption", "a text-conditioned score_fn")


def _dropped_input_cfg(score_fn: Callable[..., Tensor], guidance_scale: float, key: str, what: str,
                       needs: str) -> Callable[..., Tensor]:
    """(1 + w) s(x, t, key=v) - w s(x, t, key dropped): the network drops `key` where `<key>_null` is True."""
    w = check_nonnegative(guidance_scale, "guidance_scale")
    keys, flag = cond_keys(score_fn), f"{key}_null"
    if keys is not None and flag not in keys:
        raise ValueError(f"{what} classifier-free guidance needs {needs} (one that takes {flag}), but "
                         f"{getattr(score_fn, '__name__', type(score_fn).__name__)} takes "
                         f"{sorted(keys) or 'no conditioning'}")

    def guided(x: Tensor, t: Tensor, **cond) -> Tensor:
        if cond.get(key) is None:
            raise ValueError(f"{what} classifier-free guidance needs {key} (cond={{{key!r}: ..., ...}})")
        if w == 0:
            return score_fn(x, t, **cond)
        null = torch.arange(2 * x.shape[0], device=x.device) >= x.shape[0]   # [False; True]
        return _mix(score_fn, x, t, w, **{flag: null}, **{k: _twice(v) for k, v in cond.items()})

    guided.guidance_scale = w
    guided.cond_keys = None if keys is None else tuple(k for k in keys if k != flag)
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
    scale = check_nonnegative(scale, "scale")
    K = num_classes if num_classes is not None else getattr(classifier_fn, "num_classes", None)
    if K is not None and (isinstance(K, bool) or not isinstance(K, int) or K < 1):
        raise ValueError(f"num_classes must be a positive integer, got {K!r}")
    checked = [None]

    def guided(x: Tensor, t: Tensor, y: Optional[Tensor] = None, **cond) -> Tensor:
        if y is None or y is not checked[0]:
            if y is None or K is not None:
                check_labels(y, x.shape[0], K)
            checked[0] = y
        if scale == 0:
            return score_fn(x, t, **cond)
        grad = classifier_gradient(classifier_fn, x, t, y, labels_checked=K is not None)
        return score_fn(x, t, **cond) + scale * grad.to(x.dtype)

    guided.scale = scale
    guided.cond_keys = _with_y(cond_keys(score_fn))
    return guided
