"""Linear observations y = A x + sigma_y n of x [B, *shape], for posterior sampling in inverse problems.

Each operator gives A (`__call__`, y [B, m]), its adjoint, and its singular value decomposition
A = U S V^T in closed form, as maps: `vt(x)` -> x_bar = V^T x [B, d] (d = prod(shape)), whose first r
coordinates are the observed directions, with singular values `singulars` [r] (all > 0), and the
remaining d - r the directions A does not see; `v(x_bar)` maps back; `ut(y)` [B, m] -> U^T y, whose
first r coordinates are s * x_bar[:, :r] + sigma_y n (the other m - r, if any, noise alone). The
posterior samplers work coordinate-wise in that basis, where an isotropic Gaussian stays isotropic.

  Inpainting(mask)            y = the observed entries of x (mask 1 = known), S = 1
  AveragePooling(shape, f)    y = the mean of every f x f block of each channel (super-resolution), S = 1 / f
  Colorization(shape)         y = the mean over the C channels of every pixel (gray levels), S = 1 / sqrt(C)
  MatrixObservation(A)        any [m, d] matrix, by torch.linalg.svd (small problems)
  OperatorObservation(fn, m)  any linear map given as a function, with no SVD (for DPS alone)

`check_problem` is every solver's check of (observation, y, shape, sigma_y), made before its first
network call.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

Tensor = torch.Tensor
__all__ = ["LinearObservation", "Inpainting", "AveragePooling", "Colorization", "MatrixObservation",
           "OperatorObservation", "check_problem"]


class LinearObservation:
    """The interface (module docstring). Subclasses set `shape`, `m`, `singulars` and the maps."""

    shape: tuple
    m: int
    singulars: Tensor
    has_svd = True

    @property
    def d(self) -> int:
        return math.prod(self.shape)

    @property
    def r(self) -> int:
        return len(self.singulars)

    def __call__(self, x: Tensor) -> Tensor:
        """A x: [B, *shape] -> [B, m]."""
        self.check_x(x)
        z = self.vt(x)[:, :self.r] * self.singulars.to(x.dtype)
        return self.u(torch.cat([z, z.new_zeros(z.shape[0], self.m - self.r)], 1))

    def adjoint(self, y: Tensor) -> Tensor:
        """A^T y: [B, m] -> [B, *shape]."""
        self.check_y(y)
        z = self.ut(y)[:, :self.r] * self.singulars.to(y.dtype)
        return self.v(torch.cat([z, z.new_zeros(z.shape[0], self.d - self.r)], 1))

    def matrix(self) -> Tensor:
        """A as a dense float64 [m, d] matrix (for tests and small problems)."""
        eye = torch.eye(self.d, dtype=torch.float64).reshape(self.d, *self.shape)
        return self(eye).T

    def check_x(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != tuple(self.shape):
            raise ValueError(f"x must be [B, {', '.join(map(str, self.shape))}] for this observation, "
                             f"got {tuple(x.shape)}")

    def check_y(self, y: Tensor) -> None:
        if y.ndim != 2 or y.shape[1] != self.m:
            raise ValueError(f"the observation y must be [B, {self.m}] (A maps {tuple(self.shape)} to {self.m} "
                             f"values), got {tuple(y.shape)}")


class Inpainting(LinearObservation):
    """y = x[:, mask]: the entries where mask [*shape] is 1 (bool, or 0/1 of any dtype)."""

    def __init__(self, mask: Tensor):
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool:
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError("mask must hold 0 and 1 only (1 = observed), or be boolean")
            mask = mask.bool()
        if not bool(mask.any()):
            raise ValueError("mask observes nothing: at least one entry must be 1")
        self.shape, self.mask = tuple(mask.shape), mask
        flat = mask.reshape(-1)
        self.order = torch.cat([flat.nonzero().squeeze(1), (~flat).nonzero().squeeze(1)])  # observed first
        self.inverse = torch.argsort(self.order)
        self.m = int(flat.sum())
        self.singulars = torch.ones(self.m, dtype=torch.float64)

    def vt(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)[:, self.order.to(x.device)]

    def v(self, z: Tensor) -> Tensor:
        return z[:, self.inverse.to(z.device)].reshape(z.shape[0], *self.shape)

    def ut(self, y: Tensor) -> Tensor:
        return y

    def u(self, z: Tensor) -> Tensor:
        return z


def _block_basis(n: int) -> Tensor:
    """An orthonormal basis [n, n] of R^n whose first row is the constant vector 1 / sqrt(n)."""
    first = torch.full((n, 1), 1 / math.sqrt(n), dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.cat([first, torch.eye(n, dtype=torch.float64)[:, :n - 1]], 1))
    q = q * torch.sign(q[0, 0])  # the first column +1 / sqrt(n), not its negative
    return q.T


class AveragePooling(LinearObservation):
    """y = the mean of each factor x factor block of every channel of x [B, C, H, W] (4x super-resolution:
    factor 4): y [B, C (H / f) (W / f)]. Each block's mean is (1 / f) times its coordinate along the unit
    constant vector, so S = 1 / f, and the block's other f^2 - 1 directions are unobserved."""

    def __init__(self, shape: Sequence[int], factor: int):
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or not isinstance(factor, int) or factor < 1 or shape[1] % factor or shape[2] % factor:
            raise ValueError(f"AveragePooling needs shape (C, H, W) with H and W divisible by an integer factor >= 1, "
                             f"got shape {shape}, factor {factor!r}")
        self.shape, self.f = shape, factor
        C, H, W = shape
        self.blocks = (C, H // factor, W // factor)
        self.m = math.prod(self.blocks)
        self.basis = _block_basis(factor * factor)
        self.singulars = torch.full((self.m,), 1.0 / factor, dtype=torch.float64)

    def _to_blocks(self, x: Tensor) -> Tensor:
        (C, h, w), f = self.blocks, self.f
        return x.reshape(x.shape[0], C, h, f, w, f).permute(0, 1, 2, 4, 3, 5).reshape(x.shape[0], self.m, f * f)

    def _from_blocks(self, b: Tensor) -> Tensor:
        (C, h, w), f = self.blocks, self.f
        return b.reshape(b.shape[0], C, h, w, f, f).permute(0, 1, 2, 4, 3, 5).reshape(b.shape[0], *self.shape)

    def vt(self, x: Tensor) -> Tensor:
        coef = self._to_blocks(x) @ self.basis.T.to(x.dtype)   # [B, m, f^2]: the block's mean direction first
        return torch.cat([coef[..., 0], coef[..., 1:].reshape(x.shape[0], -1)], 1)

    def v(self, z: Tensor) -> Tensor:
        ff = self.f * self.f
        coef = torch.cat([z[:, :self.m, None], z[:, self.m:].reshape(z.shape[0], self.m, ff - 1)], 2)
        return self._from_blocks(coef @ self.basis.to(z.dtype))

    def ut(self, y: Tensor) -> Tensor:
        return y

    def u(self, z: Tensor) -> Tensor:
        return z


class Colorization(LinearObservation):
    """y = the mean over the channels of x [B, C, H, W] at every pixel: y [B, H W]. The mean is 1 / sqrt(C)
    times the pixel's coordinate along the unit constant vector of R^C (S = 1 / sqrt(C)); the other C - 1
    directions, the colours, are unobserved."""

    def __init__(self, shape: Sequence[int]):
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or shape[0] < 2:
            raise ValueError(f"Colorization needs shape (C, H, W) with C >= 2 channels, got {shape}")
        self.shape, (C, H, W) = shape, shape
        self.m, self.basis = H * W, _block_basis(C)
        self.singulars = torch.full((self.m,), 1.0 / math.sqrt(C), dtype=torch.float64)

    def vt(self, x: Tensor) -> Tensor:
        coef = x.reshape(x.shape[0], self.shape[0], self.m).transpose(1, 2) @ self.basis.T.to(x.dtype)  # [B, HW, C]
        return torch.cat([coef[..., 0], coef[..., 1:].reshape(x.shape[0], -1)], 1)

    def v(self, z: Tensor) -> Tensor:
        C = self.shape[0]
        coef = torch.cat([z[:, :self.m, None], z[:, self.m:].reshape(z.shape[0], self.m, C - 1)], 2)
        return (coef @ self.basis.to(z.dtype)).transpose(1, 2).reshape(z.shape[0], *self.shape)

    def ut(self, y: Tensor) -> Tensor:
        return y

    def u(self, z: Tensor) -> Tensor:
        return z


class MatrixObservation(LinearObservation):
    """y = A x for a dense A [m, d] acting on x [B, d] (or x [B, *shape] with `shape`), by its SVD."""

    def __init__(self, A: Tensor, shape: Sequence[int] = None, rtol: float = 1e-10):
        A = torch.as_tensor(A, dtype=torch.float64)
        if A.ndim != 2:
            raise ValueError(f"A must be a matrix [m, d], got shape {tuple(A.shape)}")
        self.shape = tuple(shape) if shape is not None else (A.shape[1],)
        if math.prod(self.shape) != A.shape[1]:
            raise ValueError(f"A has {A.shape[1]} columns, but shape {self.shape} has {math.prod(self.shape)} entries")
        U, S, Vh = torch.linalg.svd(A, full_matrices=True)
        r = int((S > rtol * S.max()).sum()) if S.numel() else 0
        if r == 0:
            raise ValueError("A is zero: it observes nothing")
        self.A, self.U, self.Vh, self.m, self.singulars = A, U, Vh, A.shape[0], S[:r]

    def vt(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1) @ self.Vh.T.to(x.dtype)

    def v(self, z: Tensor) -> Tensor:
        return (z @ self.Vh.to(z.dtype)).reshape(z.shape[0], *self.shape)

    def ut(self, y: Tensor) -> Tensor:
        return y @ self.U.to(y.dtype)

    def u(self, z: Tensor) -> Tensor:
        return z @ self.U.T.to(z.dtype)


class OperatorObservation(LinearObservation):
    """y = fn(x) for a linear function fn: [B, *shape] -> [B, m] given as code (a blur, a Radon transform),
    with no SVD: solvers that work in the SVD basis (particle, DDRM, Pi-GDM) refuse it; DPS needs only A.
    The adjoint is fn's vector-Jacobian product (exact for a linear fn)."""

    has_svd = False

    def __init__(self, fn, shape: Sequence[int], m: int):
        if not callable(fn):
            raise TypeError(f"fn must be a callable linear map x [B, *shape] -> y [B, m], got {type(fn).__name__}")
        self.fn, self.shape, self.m = fn, tuple(int(s) for s in shape), int(m)

    @property
    def r(self) -> int:
        raise ValueError(f"{type(self).__name__} has no SVD, so no rank")

    def __call__(self, x: Tensor) -> Tensor:
        self.check_x(x)
        out = self.fn(x)
        if not torch.is_tensor(out) or tuple(out.shape) != (x.shape[0], self.m):
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ValueError(f"the observation's fn returned {got} for x of shape {tuple(x.shape)}; it must return "
                             f"[B, m] = [{x.shape[0]}, {self.m}]")
        return out

    def adjoint(self, y: Tensor) -> Tensor:
        self.check_y(y)
        with torch.enable_grad():
            x = torch.zeros(y.shape[0], *self.shape, dtype=y.dtype, device=y.device, requires_grad=True)
            return torch.autograd.grad(self(x), x, y)[0]


def check_problem(observation, y, shape: Sequence[int], sigma_y, solver: str, needs_svd: bool = True) -> None:
    """Every check of an inverse problem before the first network call: the observation's type (and its
    SVD where `solver` works in that basis), x's shape against A, y [B, m], and sigma_y >= 0."""
    if not isinstance(observation, LinearObservation):
        raise TypeError(f"observation must be a samplers.observations.LinearObservation, got {type(observation).__name__}")
    if needs_svd and not observation.has_svd:
        raise ValueError(f"{solver} works in the SVD basis of A, and {type(observation).__name__} has no SVD: give A as "
                         "a MatrixObservation (small problems) or one of the structured operators, or use 'dps'")
    if tuple(shape[1:]) != tuple(observation.shape):
        raise ValueError(f"shape {tuple(shape)} does not match the observation's x shape [B, {observation.shape}]")
    if not torch.is_tensor(y) or y.ndim != 2 or y.shape != (shape[0], observation.m):
        got = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
        raise ValueError(f"y must be [B, m] = [{shape[0]}, {observation.m}] (one observation per posterior sample), "
                         f"got {got}")
    if not torch.is_floating_point(y) or not bool(torch.isfinite(y).all()):
        raise ValueError("y must hold finite floating-point values")
    if isinstance(sigma_y, bool) or not (isinstance(sigma_y, (int, float)) and math.isfinite(sigma_y) and sigma_y >= 0):
        raise ValueError(f"sigma_y must be a finite number >= 0, got {sigma_y!r}")
