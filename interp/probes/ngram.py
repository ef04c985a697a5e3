"""Text-only baseline: a TF-IDF word 1–2-gram logistic regression on exactly the text a probe sees.

At depth d a Safety-Token probe has seen the prompt and the first d response tokens, so the baseline reads
``prompt + "\\n" + response[:chars[i, d]]`` (``chars`` is recorded at extraction, see
:func:`interp.extract.packed.text_at_depths`). It is fitted on the same training pairs and scored on the same held-out
pairs as the probe; if it matches the probe, the probe number is not evidence of a Safety-Token signal.
"""

from __future__ import annotations

import numpy as np

from interp import UserError
from interp.probes.cv import Split


def depth_texts(prompts, responses, chars: np.ndarray) -> np.ndarray:
    """``[N, D]`` object array: the text a probe at each depth has seen (prompt + response prefix); ``chars
    [N]`` gives ``[N]`` (one text per answer, e.g. at its end)."""
    chars = np.asarray(chars)
    flat = chars.ndim == 1
    chars = chars.reshape(len(chars), -1)
    out = np.empty(chars.shape, dtype=object)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        r = str(r)
        for k, c in enumerate(chars[i]):
            out[i, k] = f"{p}\n{r[:max(int(c), 0)]}"
    return out[:, 0] if flat else out


def _model(C: float = 1.0):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, lowercase=True),
                         LogisticRegression(C=C, class_weight="balanced", max_iter=2000))


def fit_predict(train_texts, train_y, *test_texts, C: float = 1.0):
    """Fit on ``train_texts`` and return P(harmful) for ``test_texts`` (one array per text list given)."""
    train_y = np.asarray(train_y)
    if len(np.unique(train_y)) < 2:
        raise UserError("the n-gram baseline needs both labels among its training texts")
    model = _model(C).fit(list(train_texts), train_y)
    out = [model.predict_proba(list(t))[:, 1] if len(t) else np.zeros(0) for t in test_texts]
    return out[0] if len(out) == 1 else out


def ngram_oof(texts: np.ndarray, y: np.ndarray, valid: np.ndarray, split: Split, C: float = 1.0,
              progress: bool = True, end_texts: np.ndarray | None = None):
    """Out-of-fold P(harmful) ``[N, D]`` over valid (row, depth) pairs on the probe's split (NaN elsewhere),
    fitted on row labels ``y [N]`` or per-pair labels ``[N, D]``. With ``end_texts [N]`` (the text at each
    answer's end) returns ``(scores, end_scores [N])``, the end scored by the fold model that tests the answer."""
    from tqdm.auto import tqdm

    rows, cols = np.nonzero(valid)
    ps = split.for_pairs(rows)
    y = np.asarray(y)
    flat, yy = texts[rows, cols], (y[rows] if y.ndim == 1 else y[rows, cols])
    out = np.full(valid.shape, np.nan)
    ends = np.full(valid.shape[0], np.nan)
    for f in tqdm(range(split.n_folds), desc="n-gram baseline (folds)", unit="fold", leave=False,
                  disable=not progress):
        tr, te = ps.train[f], ps.test[f]
        if te.any() and tr.any() and len(np.unique(yy[tr])) == 2:
            model = _model(C).fit(list(flat[tr]), yy[tr])
            out[rows[te], cols[te]] = model.predict_proba(list(flat[te]))[:, 1]
            m = split.test[f]
            if end_texts is not None and m.any():
                ends[m] = model.predict_proba(list(np.asarray(end_texts)[m]))[:, 1]
    return out if end_texts is None else (out, ends)
