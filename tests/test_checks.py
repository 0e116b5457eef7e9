"""sde_lib's argument checks and the one check of conditioning: what they accept, and errors that name
the argument, the bad value and what is allowed; the sde_lib package's layout."""
import importlib.util
import math

import pytest
import torch

import sde_lib
from sde_lib import analytic, checks, registry
from sde_lib.checks import check_cond, check_labels, check_nonnegative, check_one_of, cond_keys


def test_check_nonnegative_takes_finite_numbers_from_zero():
    assert check_nonnegative(0, "eta") == 0.0 and isinstance(check_nonnegative(2, "eta"), float)
    for bad in (-0.5, math.inf, math.nan, True, "1", None):
        with pytest.raises(ValueError, match=rf"^eta must be a finite number >= 0 \(0: deterministic\), got {bad!r}$"):
            check_nonnegative(bad, "eta", " (0: deterministic)")


def test_check_one_of_lists_what_is_allowed():
    assert check_one_of("norm", "sample", ("batch", "sample")) == "sample"
    with pytest.raises(ValueError, match=r"^norm must be one of \('batch', 'sample'\), got 'max'$"):
        check_one_of("norm", "max", ("batch", "sample"))


def test_check_labels_names_the_first_bad_label():
    y = torch.tensor([0, 2, 1])
    assert check_labels(y, 3, 3) is y and check_labels(torch.tensor([7]), 1, None) is not None
    allowed = r"integer class labels in \[0, 3\), one per sample \(shape \[3\]\)"
    with pytest.raises(ValueError, match=rf"y is required: pass {allowed} as cond=\{{'y': labels\}}"):
        check_labels(None, 3, 3)
    for bad, got in ((torch.tensor([0, 3, 1]), r"got y\[1\] = 3"), (torch.tensor([0, 1, -1]), r"got y\[2\] = -1"),
                     (torch.zeros(3), "got torch.float32"), (torch.ones(3, dtype=torch.bool), "got torch.bool"),
                     ([0, 1, 2], "got list"), (torch.zeros(2, dtype=torch.long), r"got shape \(2,\)")):
        with pytest.raises(ValueError, match=rf"^y must be {allowed}; {got}$"):
            check_labels(bad, 3, 3)
    with pytest.raises(ValueError, match=r"in \[0, 3\) or 3 \(null\)"):
        check_labels(torch.tensor([4, 0, 0]), 3, 3, " or 3 (null)")


def test_cond_keys_reads_the_declaration_or_the_signature():
    def plain(x, t):
        return x

    def labelled(x, t, y, *, mask=None):
        return x

    def anything(x, t, **cond):
        return x

    declared = lambda x, t, **cond: x
    declared.cond_keys = ["y"]
    assert cond_keys(plain) == () and cond_keys(labelled) == ("y", "mask") and cond_keys(anything) is None
    assert cond_keys(declared) == ("y",) and cond_keys(torch.neg) is None  # a builtin: nothing to read
    declared.cond_keys = None
    assert cond_keys(declared) is None


def test_check_cond_refuses_names_and_batch_sizes_before_any_call():
    def score(x, t, y=None):
        raise AssertionError("check_cond never calls the score")

    y = torch.zeros(4, dtype=torch.long)
    assert check_cond(score, None, 4) == {}
    cond = {"y": y}
    out = check_cond(score, cond, 4)
    assert out == cond and out is not cond and out["y"] is y
    assert check_cond(score, {"y": None}, 4) == {"y": None}  # None: the network's default
    with pytest.raises(TypeError, match=r"^conditioning 'mask' is not taken by the score function score; it takes \['y'\]$"):
        check_cond(score, {"y": y, "mask": y}, 4)
    with pytest.raises(TypeError, match=r"cond must be a mapping \{name: tensor \[B, \.\.\.\]\} or None, got Tensor"):
        check_cond(score, y, 4)
    with pytest.raises(ValueError, match=r"^cond\['y'\] must be a tensor with one row per sample \(shape \[5, \.\.\.\]\), "
                                         r"got shape \(4,\)$"):
        check_cond(score, cond, 5)


def test_sde_lib_holds_the_checks_registry_and_mixtures_and_score_toolkit_no_longer_does():
    assert sde_lib.GaussianMixture is analytic.GaussianMixture and sde_lib.VPSDE is sde_lib.sdes.VPSDE
    assert isinstance(registry.Registry("thing"), registry.Registry) and checks.check_cond is check_cond
    for gone in ("score_toolkit.checks", "score_toolkit.registry", "score_toolkit.analytic"):
        assert importlib.util.find_spec(gone) is None, gone
