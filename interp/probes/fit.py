"""Linear probe trainers: scikit-learn logistic regression (reference), difference of means, and a batched
torch solver that fits many problems (layers x folds x depths) at once.

All return :class:`LinearParams`: ``logit(x) = ((x - mean) / scale) @ coef + intercept`` (mean/scale None when
not standardised). The torch solver minimises scikit-learn's objective exactly:
``0.5 * ||w||^2 + C * sum_i s_i * logloss_i`` with the intercept unpenalised and ``s_i`` the class weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from interp import UserError


@dataclass
class LinearParams:
    """Linear scorers; leading batch dims ``[...]`` are shared by all fields."""

    coef: np.ndarray  # [..., d]
    intercept: np.ndarray  # [...]
    mean: np.ndarray | None = None  # [..., d]
    scale: np.ndarray | None = None  # [..., d]
    info: dict = field(default_factory=dict)

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """Raw-basis ``(w [..., d], b [...])`` with the scaler folded in: ``logit = x @ w + b``."""
        w = self.coef.astype(np.float64)
        b = self.intercept.astype(np.float64)
        if self.scale is not None:
            w = w / self.scale
        if self.mean is not None:
            b = b - (self.mean * w).sum(-1)
        return w, b

    def logit(self, X: np.ndarray) -> np.ndarray:
        """Logits of ``X [M, d]`` for every batch entry: ``[..., M]``."""
        w, b = self.folded()
        return np.einsum("md,...d->...m", X.astype(np.float64), w) + b[..., None]

    def __getitem__(self, idx) -> LinearParams:
        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return LinearParams(self.coef[idx], np.asarray(self.intercept[idx]), pick(self.mean), pick(self.scale))


def _balanced_weights(y: np.ndarray) -> np.ndarray:
    counts = np.bincount(y, minlength=2).astype(np.float64)
    if (counts == 0).any():
        raise UserError("a training set holds only one class; use more prompts or fewer folds")
    return (len(y) / (2.0 * counts))[y]


def _scaler(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(0, dtype=np.float64)
    std = X.std(0, dtype=np.float64)
    std[std < 1e-12 * max(1.0, float(np.abs(mean).max()))] = 1.0
    return mean, std


def fit_sklearn(X: np.ndarray, y: np.ndarray, *, C: float = 1.0, class_weight: str | None = "balanced",
                standardize: bool = False, max_iter: int = 1000, tol: float = 1e-4) -> LinearParams:
    """scikit-learn ``LogisticRegression`` (lbfgs, L2) on ``X [M, d]``, optionally standardised first."""
    mean = scale = None
    Xf = X
    if standardize:
        mean, scale = _scaler(X)
        Xf = ((X - mean) / scale).astype(np.float32)
    model = LogisticRegression(C=C, class_weight=class_weight, max_iter=max_iter, tol=tol)
    model.fit(Xf, y)
    return LinearParams(model.coef_[0].astype(np.float64), np.asarray(model.intercept_[0], dtype=np.float64),
                        mean, scale, info={"n_iter": int(model.n_iter_[0])})


def fit_diff_of_means(X: np.ndarray, y: np.ndarray, *, standardize: bool = False,
                      class_weight: str | None = "balanced") -> LinearParams:
    """Difference-of-means direction (harmful minus benign mean, unit norm), with a 1-D logistic fit of scale
    and bias on the projections so scores are probabilities comparable to the other probes."""
    mean = scale = None
    Xf = X.astype(np.float64)
    if standardize:
        mean, scale = _scaler(X)
        Xf = (Xf - mean) / scale
    direction = Xf[y == 1].mean(0) - Xf[y == 0].mean(0)
    norm = np.linalg.norm(direction)
    if not np.isfinite(norm) or norm <= 1e-12 * max(1.0, float(np.abs(Xf).max())):
        # identical class means (e.g. the embedding of a fixed token at layer 0): a constant, uninformative probe
        return LinearParams(np.zeros(X.shape[1]), np.asarray(0.0), mean, scale, info={"degenerate": True})
    direction /= norm
    proj = (Xf @ direction)[:, None]
    one_d = LogisticRegression(C=1e6, class_weight=class_weight, max_iter=1000).fit(proj, y)
    return LinearParams(direction * one_d.coef_[0, 0], np.asarray(one_d.intercept_[0], dtype=np.float64),
                        mean, scale, info={"direction": direction})


def fit_logreg_torch(X: np.ndarray | torch.Tensor, y: np.ndarray, masks: np.ndarray | None = None, *,
                     C: float = 1.0, class_weight: str | None = "balanced", standardize: bool = False,
                     tol: float = 1e-5, max_iter: int = 500, history: int = 10, precond_rows: int = 4096,
                     seed: int = 0, trace: list | None = None) -> LinearParams:
    """Fit L x P logistic regressions at once with preconditioned L-BFGS.

    ``X [M, d]`` or ``[L, M, d]`` (layers share rows), ``y [M]``, ``masks [P, M]`` bool (training rows of each
    problem: folds, depths ...; None = one problem on all rows). Returns params shaped ``[L, P, ...]``.
    ``tol`` bounds the max-abs gradient of the objective divided by ``C * sum(s)`` (scikit-learn's scaling).
    The preconditioner is the exact Hessian at w = 0 estimated on ``precond_rows`` rows, so the first step is a
    Newton step and the iteration count barely depends on how badly scaled the activations are.
    """
    Xt = torch.as_tensor(X, dtype=torch.float32)
    if Xt.ndim == 2:
        Xt = Xt.unsqueeze(0)
    n_layers, n_rows, d = Xt.shape
    y_np = np.asarray(y).astype(np.int64)
    m_np = np.ones((1, n_rows), bool) if masks is None else np.asarray(masks, dtype=bool)
    n_prob = m_np.shape[0]
    s_np = np.zeros(m_np.shape, np.float64)
    for p in range(n_prob):
        rows = np.nonzero(m_np[p])[0]
        if len(np.unique(y_np[rows])) < 2:
            raise UserError("a training set holds only one class; use more prompts or fewer folds")
        s_np[p, rows] = _balanced_weights(y_np[rows]) if class_weight == "balanced" else 1.0
    sw = torch.as_tensor(s_np * C, dtype=torch.float32)  # [P, M] includes C
    sw_sum = torch.as_tensor(s_np.sum(1) * C, dtype=torch.float64)  # [P]
    yt = torch.as_tensor(y_np, dtype=torch.float32)[:, None]  # [M, 1]
    m0 = Xt.mean(1, keepdim=True)  # [L, 1, d]
    Xc = Xt - m0
    del Xt
    if standardize:
        mf = torch.as_tensor(m_np, dtype=torch.float32)
        cnt = mf.sum(1)[None, :, None]
        mean_c = torch.matmul(mf, Xc) / cnt  # [L, P, d] mean of centred data
        var = torch.matmul(mf, Xc * Xc) / cnt - mean_c**2
        std = var.clamp_min(0).sqrt()
        std = torch.where(std < 1e-6 * std.amax(-1, keepdim=True).clamp_min(1e-30), torch.ones_like(std), std)
    else:
        mean_c = torch.zeros(n_layers, n_prob, d)
        std = torch.ones(n_layers, n_prob, d)

    def fg(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w, b = theta[..., :d], theta[..., d]
        u = w / std
        c = b - (mean_c * u).sum(-1)
        z = torch.matmul(Xc, u.transpose(1, 2)) + c[:, None, :]  # [L, M, P]
        z64 = z.double()
        loss = (torch.nn.functional.softplus(z64) - yt.double() * z64) * sw.T.double()[None]
        f = 0.5 * (w.double() ** 2).sum(-1) + loss.sum(1)  # [L, P]
        r = (torch.sigmoid(z) - yt) * sw.T[None]  # [L, M, P]
        gu = torch.matmul(r.transpose(1, 2), Xc)  # [L, P, d]
        rs = r.sum(1)  # [L, P]
        gw = w + (gu - mean_c * rs[..., None]) / std
        return f, torch.cat([gw, rs[..., None]], -1)

    # Preconditioner: the Hessian (averaged over problems) estimated on a row subsample; built at w = 0
    # (p = 1/2 everywhere, so the first step is a Newton step).
    rng = np.random.default_rng(seed)
    sub = torch.as_tensor(np.sort(rng.choice(n_rows, min(n_rows, precond_rows), replace=False)))
    Xs = Xc[:, sub]
    g_mean, g_std = mean_c.mean(1, keepdim=True), std.mean(1, keepdim=True)
    Xs = torch.cat([(Xs - g_mean) / g_std, torch.ones(n_layers, len(sub), 1)], -1)  # [L, m, d+1]
    sw_sub = sw[:, sub]  # [P, m]
    ridge = torch.diag(torch.cat([torch.ones(d), torch.full((1,), 1e-8 * float(sw_sum.mean()))])).double()

    def build_precond(curv: torch.Tensor) -> torch.Tensor:
        """Cholesky factor of ``(M/m) Xs^T diag(curv) Xs + I`` for per-row curvature ``curv [L, m]``."""
        A = torch.matmul(Xs.transpose(1, 2) * (curv[:, None, :] * n_rows / len(sub)), Xs).double()
        return torch.linalg.cholesky(A + ridge)

    chol = build_precond((sw_sub.mean(0) / 4.0).expand(n_layers, -1))

    a_inv = torch.cholesky_inverse(chol).float()  # [L, d+1, d+1], symmetric

    def h0(v: torch.Tensor) -> torch.Tensor:
        return torch.matmul(v, a_inv)

    theta = torch.zeros(n_layers, n_prob, d + 1)
    f, g = fg(theta)
    hist_s: list[torch.Tensor] = []
    hist_y: list[torch.Tensor] = []
    hist_rho: list[torch.Tensor] = []
    gamma = torch.ones(n_layers, n_prob)
    done = torch.zeros(n_layers, n_prob, dtype=torch.bool)
    n_iter = torch.zeros(n_layers, n_prob, dtype=torch.int64)
    for _ in range(max_iter):
        done |= (g.abs().amax(-1).double() / sw_sum[None]) <= tol
        if trace is not None:
            trace.append((g.abs().amax(-1).double() / sw_sum[None]).numpy().copy())
        if bool(done.all()):
            break
        q = g.clone()
        alphas = []
        for s_k, y_k, rho_k in zip(reversed(hist_s), reversed(hist_y), reversed(hist_rho)):
            a = rho_k * (s_k * q).sum(-1)
            q -= a[..., None] * y_k
            alphas.append(a)
        r = h0(q) * gamma[..., None]
        for s_k, y_k, rho_k, a in zip(hist_s, hist_y, hist_rho, reversed(alphas)):
            bcoef = rho_k * (y_k * r).sum(-1)
            r += s_k * (a - bcoef)[..., None]
        direction = torch.where(done[..., None], torch.zeros_like(r), -r)
        slope = (g * direction).sum(-1).double()
        step = torch.ones(n_layers, n_prob, dtype=torch.float64)
        for _ls in range(30):
            theta_new = theta + step.float()[..., None] * direction
            f_new, g_new = fg(theta_new)
            ok = (f_new <= f + 1e-4 * step * slope + 1e-7 * f.abs()) | done
            if bool(ok.all()):
                break
            step = torch.where(ok, step, step * 0.5)
        else:  # line search failed: float32 noise floor reached; stop those problems where they are
            done |= ~ok
            theta_new = torch.where(ok[..., None], theta_new, theta)
            f_new, g_new = fg(theta_new)
        s_vec, y_vec = theta_new - theta, g_new - g
        sy = (s_vec * y_vec).sum(-1)
        good = sy > 1e-10
        hist_s.append(s_vec)
        hist_y.append(y_vec)
        hist_rho.append(torch.where(good, 1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy)))
        if len(hist_s) > history:
            hist_s.pop(0), hist_y.pop(0), hist_rho.pop(0)
        yhy = (y_vec * h0(y_vec)).sum(-1)
        gamma = torch.where(good & (yhy > 0), sy / yhy.clamp_min(1e-30), gamma)
        n_iter += (~done).long()
        theta, f, g = theta_new, f_new, g_new
    done |= (g.abs().amax(-1).double() / sw_sum[None]) <= tol
    w = theta[..., :d].double().numpy()
    b = theta[..., d].double().numpy()
    info = {"n_iter": n_iter.numpy(), "converged": done.numpy()}
    m0_np = m0.double().numpy()  # [L, 1, d]
    if standardize:
        return LinearParams(w, b, (mean_c.double() + m0.double()).numpy(), std.double().numpy(), info=info)
    return LinearParams(w, b - (m0_np * w).sum(-1), None, None, info=info)
