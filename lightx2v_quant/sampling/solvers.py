"""Flow-matching solvers: UniPC multistep (as the official Wan sampler) and Euler.

A solver walks a schedule's sigmas. ``step(v, x)`` takes the model's velocity ``v`` at the current
sigma and the current sample ``x`` (float32) and returns the sample at the next sigma.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def _lam(sigma: float) -> float:
    """Half log-SNR of the flow path: log(alpha) - log(sigma) with alpha = 1 - sigma (+inf at sigma 0)."""
    if sigma == 0.0:
        return math.inf
    return math.log(1.0 - sigma) - math.log(sigma)


class FlowEuler:
    """``x <- x + (sigma_next - sigma) * v``. On the distilled grid this is LightX2V's deterministic
    update (to x0 and back to the next noise level along the predicted velocity); the last step lands on x0."""

    name = "euler"

    def __init__(self, sigmas: Sequence[float]) -> None:
        self.sigmas = list(sigmas)
        self.index = 0

    def step(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        i = self.index
        self.index += 1
        return x + (self.sigmas[i + 1] - self.sigmas[i]) * v.float()


class FlowUniPC:
    """UniPC multistep on a flow grid: data (x0) prediction, B(h) = expm1(-h) ("bh2"), predictor order
    ``order`` with a corrector after every step but the first, order 1 at the first and last steps.

    The same algorithm as the official ``FlowUniPCMultistepScheduler`` (solver_order 2, predict_x0,
    bh2, lower_order_final, final sigma 0). The scalar coefficients are computed in float64; the
    sample arithmetic stays in float32.
    """

    name = "unipc"

    def __init__(self, sigmas: Sequence[float], order: int = 2, lower_order_final: bool = True) -> None:
        self.sigmas = list(sigmas)
        if any(s >= 1.0 for s in self.sigmas):
            raise ValueError("UniPC needs sigmas < 1 (log(1 - sigma) is -inf at 1); use the unipc schedule")
        self.order = order
        self.lower_order_final = lower_order_final
        self.index = 0
        self.x0_history: list[torch.Tensor] = []  # newest last; x0 at sigmas[index - k]
        self.last_sample: torch.Tensor | None = None  # the sample the previous predictor started from
        self.last_order = 0

    def step(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        i, n = self.index, len(self.sigmas) - 1
        x0 = x - self.sigmas[i] * v.float()
        if i > 0:
            x = self._correct(x0)
        self.x0_history = (self.x0_history + [x0])[-self.order :]
        order = min(self.order, n - i) if self.lower_order_final else self.order
        order = min(order, len(self.x0_history))  # warm-up: no more history than steps taken
        self.last_sample, self.last_order = x, order
        self.index += 1
        return self._predict(x, order)

    # Both updates below follow one pattern between a start sigma s and a target sigma t:
    #   x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) m0 - alpha_t B(h) sum_k rho_k D_k
    # with h = lambda_t - lambda_s, m0 the x0 prediction at s and D_k divided differences of x0.

    def _coefficients(self, s: int, t_sigma: float, order: int, history: list[torch.Tensor]):
        """(x coefficient, m0 coefficient, B(h) term, rhs b, divided differences, R) for a step from sigmas[s]."""
        lam_s, lam_t = _lam(self.sigmas[s]), _lam(t_sigma)
        h = lam_t - lam_s
        hh = -h
        phi1 = math.expm1(hh)
        b_h = math.expm1(hh)  # bh2
        m0 = history[-1]
        rks, diffs = [], []
        for k in range(1, order):
            rk = (_lam(self.sigmas[s - k]) - lam_s) / h
            rks.append(rk)
            diffs.append((history[-(k + 1)] - m0) / rk)
        rks.append(1.0)
        rks_arr = np.array(rks, dtype=np.float64)
        rows, rhs = [], []
        h_phi_k = phi1 / hh - 1.0
        factorial = 1
        for j in range(1, order + 1):
            rows.append(rks_arr ** (j - 1))
            rhs.append(h_phi_k * factorial / b_h)
            factorial *= j + 1
            h_phi_k = h_phi_k / hh - 1.0 / factorial
        alpha_t = 1.0 - t_sigma
        x_coef = t_sigma / self.sigmas[s]
        m0_coef = -alpha_t * phi1
        return x_coef, m0_coef, -alpha_t * b_h, np.array(rhs), diffs, np.stack(rows)

    def _predict(self, x: torch.Tensor, order: int) -> torch.Tensor:
        """UniP: from sigmas[index-1] (the step just taken) to sigmas[index]."""
        s = self.index - 1
        x_coef, m0_coef, b_coef, rhs, diffs, rows = self._coefficients(
            s, self.sigmas[s + 1], order, self.x0_history
        )
        out = x_coef * x + m0_coef * self.x0_history[-1]
        if diffs:
            rhos = [0.5] if order == 2 else np.linalg.solve(rows[:-1, :-1], rhs[:-1]).tolist()
            out = out + b_coef * sum(r * d for r, d in zip(rhos, diffs))
        return out

    def _correct(self, x0_new: torch.Tensor) -> torch.Tensor:
        """UniC: redo the previous step from ``last_sample`` using the new x0 at the current sigma."""
        s, order = self.index - 1, self.last_order
        x_coef, m0_coef, b_coef, rhs, diffs, rows = self._coefficients(
            s, self.sigmas[self.index], order, self.x0_history
        )
        rhos = [0.5] if order == 1 else np.linalg.solve(rows, rhs).tolist()
        out = x_coef * self.last_sample + m0_coef * self.x0_history[-1]
        correction = rhos[-1] * (x0_new - self.x0_history[-1])
        if diffs:
            correction = correction + sum(r * d for r, d in zip(rhos[:-1], diffs))
        return out + b_coef * correction


SOLVERS = {"unipc": FlowUniPC, "euler": FlowEuler}


def make_solver(name: str, sigmas: Sequence[float]) -> FlowUniPC | FlowEuler:
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; solvers: {', '.join(SOLVERS)}")
    return SOLVERS[name](sigmas)
