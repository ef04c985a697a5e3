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
from scipy.linalg import blas
from sklearn.linear_model import LogisticRegression

from interp import UserError
from interp.memory import available_memory

LOGIT_BLOCK_BYTES = 1 << 26  # float64 rows cast at a time by LinearParams.logit (64 MiB)


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
        """Logits of ``X [M, d]`` for every batch entry: ``[..., M]``, in float64, ``X`` cast
        :data:`LOGIT_BLOCK_BYTES` at a time (a float64 copy of a whole layer would double its memory)."""
        w, b = self.folded()
        out = np.empty(w.shape[:-1] + (len(X),), np.float64)
        step = max(1, LOGIT_BLOCK_BYTES // (8 * max(1, X.shape[-1])))
        for s in range(0, len(X), step):
            out[..., s:s + step] = np.einsum("md,...d->...m", X[s:s + step].astype(np.float64), w)
        return out + b[..., None]

    def __getitem__(self, idx) -> LinearParams:
        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return LinearParams(self.coef[idx], np.asarray(self.intercept[idx]), pick(self.mean), pick(self.scale))


def row_weights(y: np.ndarray, class_weight: str | None = "balanced", sources: np.ndarray | None = None,
                boost: np.ndarray | None = None) -> np.ndarray:
    """Per-row weights ``s_i`` of the objective. ``class_weight="balanced"`` gives each class the total weight
    ``n / 2`` (scikit-learn's rule), else each class keeps its row count; with ``sources`` that total is shared
    equally by the sources of the class, so a source's weight does not grow with its row count. ``boost [M]``
    multiplies each row's share within its class: a row of boost 3 weighs three times a row of boost 1 of the same
    source, and a source whose rows are all boosted 3 weighs three times a source of the same size unboosted (with
    ``sources``, a source's share of the class total is proportional to its rows' mean boost). The class totals
    stay as they were."""
    y = np.asarray(y).astype(np.int64)
    counts = np.bincount(y, minlength=2).astype(np.float64)
    if (counts == 0).any():
        raise UserError("a training set holds only one class; use more prompts or fewer folds")
    totals = np.full(2, len(y) / 2.0) if class_weight == "balanced" else counts
    b = np.ones(len(y)) if boost is None else np.asarray(boost, dtype=np.float64)
    src = np.zeros(len(y), dtype=str) if sources is None else np.asarray(sources).astype(str)
    w = np.empty(len(y))
    for c in (0, 1):
        in_c = y == c
        inverse = np.unique(src[in_c], return_inverse=True)[1].reshape(-1)
        rows = np.bincount(inverse).astype(np.float64)
        mean_boost = np.bincount(inverse, weights=b[in_c]) / rows  # a source's share is proportional to it
        w[in_c] = totals[c] * b[in_c] / (rows[inverse] * mean_boost.sum())
    return w


def _scaler(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(0, dtype=np.float64)
    std = X.std(0, dtype=np.float64)
    std[std < 1e-12 * max(1.0, float(np.abs(mean).max()))] = 1.0
    return mean, std


def fit_sklearn(X: np.ndarray, y: np.ndarray, *, C: float = 1.0, class_weight: str | None = "balanced",
                standardize: bool = False, max_iter: int = 1000, tol: float = 1e-4,
                sources: np.ndarray | None = None, boost: np.ndarray | None = None) -> LinearParams:
    """scikit-learn ``LogisticRegression`` (lbfgs, L2) on ``X [M, d]``, optionally standardised first; with
    ``sources`` or ``boost`` the rows carry :func:`row_weights` as sample weights."""
    mean = scale = None
    Xf = X
    if standardize:
        mean, scale = _scaler(X)
        Xf = ((X - mean) / scale).astype(np.float32)
    if sources is None and boost is None:
        model = LogisticRegression(C=C, class_weight=class_weight, max_iter=max_iter, tol=tol).fit(Xf, y)
    else:
        model = LogisticRegression(C=C, max_iter=max_iter, tol=tol).fit(
            Xf, y, sample_weight=row_weights(y, class_weight, sources, boost))
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


COPY_BUDGET: int | None = None  # bytes the solver's centred copy of the rows may take; None: see default_copy_budget


def default_copy_budget() -> int:
    """:data:`COPY_BUDGET`, or the memory available now less a reserve (a fifth of it, at least 2 GiB) for the
    solver's other arrays; 256 MiB when the available memory is unknown."""
    if COPY_BUDGET is not None:
        return COPY_BUDGET
    free = available_memory()
    return 256 << 20 if free is None else max(0, free - max(2 << 30, free // 5))


class _Centred:
    """The rows centred on their mean, ``X - m0`` (float32, ``[L, M, d]``): one copy made up front when it fits
    ``budget`` bytes (fast), else centred ``chunk`` rows at a time inside each product, so a layer too large to
    hold twice is held once (about 2x slower; the products agree with the copy's to float32 rounding)."""

    def __init__(self, X: torch.Tensor, m0: torch.Tensor, budget: int, chunk: int = 8192) -> None:
        self.m0, self.shape = m0, X.shape
        self.full = (X - m0).contiguous() if X.numel() * 4 <= budget else None  # the only [L, M, d] copy
        self.X, self.chunk = (None if self.full is not None else X), chunk

    def parts(self):
        """``(row slice, centred rows)`` covering every row."""
        if self.full is not None:
            yield slice(None), self.full
            return
        for start in range(0, self.shape[1], self.chunk):
            sl = slice(start, start + self.chunk)
            yield sl, self.X[:, sl] - self.m0

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        return self.full[:, idx] if self.full is not None else self.X[:, idx] - self.m0

    def matmul(self, u: torch.Tensor) -> torch.Tensor:
        """``(X - m0) @ u`` for ``u [L, d, P]``: ``[L, M, P]``."""
        return torch.cat([torch.matmul(xc, u) for _, xc in self.parts()], 1)

    def rmatmul(self, r: torch.Tensor) -> torch.Tensor:
        """``r @ (X - m0)`` for ``r [L, P, M]``: ``[L, P, d]``."""
        out = None
        for sl, xc in self.parts():
            part = torch.matmul(r[..., sl], xc)
            out = part if out is None else out + part
        return out


class _Rows:
    """Data term of ``[L, P]`` problems on shared rows: features ``(Xc - mean_c) / std`` plus an intercept,
    labels ``yt [M, 1]``, per-problem row weights ``sw [M, P]`` (C and class weights folded in, 0 = not trained)."""

    def __init__(self, Xc: _Centred, yt: torch.Tensor, sw: torch.Tensor, mean_c: torch.Tensor,
                 std: torch.Tensor) -> None:
        self.Xc, self.yt, self.sw, self.mean_c, self.std = Xc, yt, sw, mean_c, std
        self.d = Xc.shape[-1]

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        """Logits ``[L, M, P]`` (float64) of ``theta [L, P, d+1]``: one float32 matmul for all problems."""
        u = theta[..., :self.d] / self.std
        c = theta[..., self.d] - (self.mean_c * u).sum(-1)
        return self.Xc.matmul(u.float().transpose(1, 2)).double() + c[:, None, :]

    def gradient(self, theta: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Objective gradient ``[L, P, d+1]`` given ``p = sigmoid(logits)``: one float32 matmul."""
        r = (p - self.yt) * self.sw
        rs = r.sum(1)
        gu = self.Xc.rmatmul(r.float().transpose(1, 2)).double()
        return torch.cat([theta[..., :self.d] + (gu - self.mean_c * rs[..., None]) / self.std, rs[..., None]], -1)


def _line_search(rows: _Rows, z: torch.Tensor, p: torch.Tensor, dz: torch.Tensor, slope: torch.Tensor,
                 b2: torch.Tensor, active: torch.Tensor, rel_tol: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``t`` near the minimum of the convex objective along a descent direction (safeguarded Newton on
    ``phi'(t) = slope + t * b2 + sum s (p(t) - p(0)) dz``; logits move linearly, so no data pass is needed).
    Returns ``t [L, P]`` (0 where no decrease was found) and ``sigmoid`` of the new logits."""
    sdz = rows.sw * dz
    t = torch.ones_like(slope)
    lo, hi = torch.zeros_like(t), torch.full_like(t, float("inf"))
    for _ in range(12):
        pt = torch.sigmoid(z + t[:, None, :] * dz)
        d1 = slope + t * b2 + ((pt - p) * sdz).sum(1)
        ok = (d1.abs() <= rel_tol * slope.abs()) | ~active
        if bool(ok.all()):
            return t, pt
        d2 = b2 + (pt * (1 - pt) * sdz * dz).sum(1)
        lo = torch.where(~ok & (d1 < 0), t, lo)
        hi = torch.where(~ok & (d1 > 0), t, hi)
        newton = t - d1 / d2.clamp_min(1e-300)
        fallback = torch.where(torch.isinf(hi), 4 * t, 0.5 * (lo + hi))
        t = torch.where(ok, t, torch.where((newton > lo) & (newton < hi), newton, fallback))
    t = torch.where(ok, t, lo)  # phi' < 0 on [0, lo], so lo still decreases the objective
    return t, torch.sigmoid(z + t[:, None, :] * dz)


def _lbfgs(rows: _Rows, theta: torch.Tensor, h0, thr: torch.Tensor, max_iter: int, history: int,
           trace: list | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Preconditioned L-BFGS over all problems at once. Logits are tracked (they move linearly along a search
    direction), so an iteration costs one forward and one gradient pass over the rows and the line search is
    exact at no extra pass. A problem stops when ``max|g| <= thr``. Returns ``theta, n_iter, done, g``."""
    d = rows.d
    z = rows.forward(theta) if bool(theta.any()) else torch.zeros(rows.sw.shape, dtype=torch.float64).expand(
        theta.shape[0], -1, -1)
    p = torch.sigmoid(z)
    g = rows.gradient(theta, p)
    hist: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    gamma = torch.ones_like(thr)
    done = torch.zeros(thr.shape, dtype=torch.bool)
    stalled = torch.zeros_like(done)
    n_iter = torch.zeros(thr.shape, dtype=torch.int64)
    for _ in range(max_iter):
        done |= g.abs().amax(-1) <= thr
        if trace is not None:
            trace.append((g.abs().amax(-1) / thr).numpy())
        active = ~(done | stalled)
        if not bool(active.any()):
            break
        q = g.clone()
        alphas = []
        for s_k, y_k, rho_k in reversed(hist):
            a = rho_k * (s_k * q).sum(-1)
            q -= a[..., None] * y_k
            alphas.append(a)
        r = h0(q) * gamma[..., None]
        for (s_k, y_k, rho_k), a in zip(hist, reversed(alphas)):
            r += s_k * (a - rho_k * (y_k * r).sum(-1))[..., None]
        direction = torch.where(active[..., None], -r, torch.zeros_like(r))
        dz = rows.forward(direction)
        t, p = _line_search(rows, z, p, dz, (g * direction).sum(-1), (direction[..., :d] ** 2).sum(-1), active)
        stalled |= active & (t <= 0)  # float32 noise floor: no decrease left along the direction
        s_vec = t[..., None] * direction
        theta = theta + s_vec
        z = z + t[:, None, :] * dz
        g_new = rows.gradient(theta, p)
        y_vec = g_new - g
        sy = (s_vec * y_vec).sum(-1)
        good = sy > 1e-10 * s_vec.norm(dim=-1) * y_vec.norm(dim=-1)
        hist.append((s_vec, y_vec, torch.where(good, 1.0 / sy.clamp_min(1e-300), torch.zeros_like(sy))))
        if len(hist) > history:
            hist.pop(0)
        yhy = (y_vec * h0(y_vec)).sum(-1)
        gamma = torch.where(good & (yhy > 0), sy / yhy.clamp_min(1e-300), gamma)
        n_iter += active.long()
        g = g_new
    return theta, n_iter, done | (g.abs().amax(-1) <= thr), g


def _symmetric_from_upper(out: np.ndarray, upper: np.ndarray, block: int = 1024) -> None:
    """``out`` (float64 ``[d, d]``) = the symmetric matrix whose upper triangle is ``upper``'s (a SYRK result),
    filled ``block`` rows at a time (no full-size temporary; the same values as ``triu(u) + triu(u, 1).T``)."""
    d = len(upper)
    for s in range(0, d, block):
        e = min(s + block, d)
        out[s:e, s:] = upper[s:e, s:]
        diag = out[s:e, s:e]
        diag[...] = np.triu(diag) + np.triu(diag, 1).T
        out[s:e, :s] = out[:s, s:e].T


def _preconditioner(rows: _Rows, n_sub: int, seed: int):
    """``v -> v A^-1`` with ``A`` the Hessian at w = 0 (p = 1/2) averaged over problems, estimated on ``n_sub``
    random rows, plus the ridge: the first step is a Newton step, and badly scaled or correlated features cost
    few iterations. ``A`` is a float32 SYRK (half a matmul's flops) per layer."""
    n_layers, n_rows, d = rows.Xc.shape
    sub = torch.as_tensor(np.sort(np.random.default_rng(seed).choice(n_rows, min(n_rows, n_sub), replace=False)))
    g_mean, g_std = rows.mean_c.mean(1).float(), rows.std.mean(1).float()  # [L, d]
    root = (rows.sw[sub].mean(1) / 4.0 * n_rows / len(sub)).sqrt().float()  # [m] sqrt of row curvature
    inverses = []
    for layer in range(n_layers):
        Xs = (rows.Xc.rows(sub)[layer] - g_mean[layer]) / g_std[layer] * root[:, None]  # [m, d]
        A = torch.empty(d + 1, d + 1, dtype=torch.float64)
        _symmetric_from_upper(A[:d, :d].numpy(), blas.ssyrk(1.0, Xs.numpy().T))  # Xs^T Xs
        A[:d, d] = A[d, :d] = (Xs.T @ root).double()  # intercept column
        A[d, d] = float((root.double() ** 2).sum()) + 1e-8 * float(rows.sw.sum(0).mean())
        A.diagonal()[:d] += 1.0
        del Xs
        factor = torch.linalg.cholesky(A)
        del A  # at most two (d+1)^2 float64 matrices alive at once
        inverse = torch.cholesky_inverse(factor)
        del factor
        inverses.append(inverse.float())
        del inverse
    a_inv = torch.stack(inverses)  # [L, d+1, d+1], symmetric
    return lambda v: torch.matmul(v.float(), a_inv).double()


def fit_logreg_torch(X: np.ndarray | torch.Tensor, y: np.ndarray, masks: np.ndarray | None = None, *,
                     C: float = 1.0, class_weight: str | None = "balanced", standardize: bool = False,
                     tol: float = 1e-5, max_iter: int = 500, history: int = 30, precond_rows: int = 8192,
                     seed: int = 0, trace: list | None = None, init: LinearParams | None = None,
                     copy_budget: int | None = None, chunk_rows: int = 8192,
                     sources: np.ndarray | None = None, boost: np.ndarray | None = None) -> LinearParams:
    """Fit L x P logistic regressions at once with preconditioned L-BFGS.

    ``X [M, d]`` or ``[L, M, d]`` (layers share rows), ``y [M]``, ``masks [P, M]`` bool (training rows of each
    problem: folds, depths ...; None = one problem on all rows). Returns params shaped ``[L, P, ...]``.
    ``tol`` bounds the max-abs gradient of the objective divided by ``C * sum(s)`` (scikit-learn's ``gtol``
    scaling, so equal ``tol`` means equal stopping rules). ``init`` (params broadcastable to ``[L, P]``, e.g. the
    previous layer's fit) warm-starts the solver; the optimum does not depend on it. ``trace`` collects, per
    iteration, ``max|g|`` over the stopping threshold ``[L, P]``. Rows up to ``copy_budget`` bytes (default
    :func:`default_copy_budget`: the memory available less a reserve) are centred into one copy; larger ones are centred
    ``chunk_rows`` at a time inside each product (no second copy of a layer that does not fit twice).
    ``sources [M]`` shares each class's weight equally among its sources and ``boost [M]`` scales rows within
    their class (:func:`row_weights`).
    """
    src = None if sources is None else np.asarray(sources).astype(str)
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
        s_np[p, rows] = row_weights(y_np[rows], class_weight, None if src is None else src[rows],
                                    None if boost is None else np.asarray(boost)[rows])
    m0 = Xt.mean(1, keepdim=True)  # [L, 1, d]
    Xc = _Centred(Xt, m0, default_copy_budget() if copy_budget is None else copy_budget, chunk_rows)
    del Xt
    if standardize:
        mf = torch.as_tensor(m_np, dtype=torch.float32)
        cnt = mf.sum(1)[None, :, None]
        mean_c = Xc.rmatmul(mf.expand(n_layers, -1, -1)) / cnt  # [L, P, d] mean of centred data
        var = sum(torch.matmul(mf[:, sl], xc * xc) for sl, xc in Xc.parts()) / cnt - mean_c**2
        std = var.clamp_min(0).sqrt()
        std = torch.where(std < 1e-6 * std.amax(-1, keepdim=True).clamp_min(1e-30), torch.ones_like(std), std)
        mean_c, std = mean_c.double(), std.double()
    else:
        mean_c = torch.zeros(n_layers, n_prob, d, dtype=torch.float64)
        std = torch.ones(n_layers, n_prob, d, dtype=torch.float64)
    rows = _Rows(Xc, torch.as_tensor(y_np, dtype=torch.float64)[:, None], torch.as_tensor(s_np.T * C),
                 mean_c, std)
    thr = (tol * torch.as_tensor(s_np.sum(1) * C)).expand(n_layers, n_prob).contiguous()
    theta = torch.zeros(n_layers, n_prob, d + 1, dtype=torch.float64)
    if init is not None:  # raw-basis (w, b) -> internal basis (centred, standardised features)
        w_raw, b_raw = init.folded()
        w_raw = torch.as_tensor(np.broadcast_to(w_raw, (n_layers, n_prob, d)).copy())
        theta[..., :d] = w_raw * std
        theta[..., d] = torch.as_tensor(np.broadcast_to(b_raw, (n_layers, n_prob)).copy()) + (
            (m0.double() + mean_c) * w_raw).sum(-1)
    h0 = _preconditioner(rows, precond_rows, seed)
    theta, n_iter, done, _ = _lbfgs(rows, theta, h0, thr, max_iter, history, trace)
    w = theta[..., :d].numpy()
    b = theta[..., d].numpy()
    info = {"n_iter": n_iter.numpy(), "converged": done.numpy()}
    if standardize:
        return LinearParams(w, b, (mean_c + m0.double()).numpy(), std.numpy(), info=info)
    return LinearParams(w, b - (m0.double().numpy() * w).sum(-1), None, None, info=info)
