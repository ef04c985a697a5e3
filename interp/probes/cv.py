"""Cross-validation splits that keep every prompt (all its depths and rows) inside one fold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import KFold, StratifiedGroupKFold

from interp import UserError


@dataclass
class Split:
    """Row-level folds: ``train[f, i]`` / ``test[f, i]`` say whether row i trains / is tested in fold f."""

    train: np.ndarray  # [F, N] bool
    test: np.ndarray  # [F, N] bool
    kind: str = "grouped"

    @property
    def n_folds(self) -> int:
        return self.train.shape[0]

    def for_pairs(self, rows: np.ndarray) -> Split:
        """The same split expressed over flattened (row, depth) pairs whose row index is ``rows``."""
        return Split(self.train[:, rows], self.test[:, rows], self.kind)


def grouped_folds(y: np.ndarray, groups: np.ndarray, n_splits: int = 5, seed: int = 0, *, where: str = "",
                  remedy: str = "lower --folds") -> Split:
    """Stratified group K-fold over rows: a prompt never appears in two folds; repeatable given ``seed``.
    ``where`` says which rows these are and ``remedy`` what to change, in the error when they cannot fill the
    folds."""
    if n_splits < 2:
        raise UserError(f"--folds must be >= 2 for cross-validation, got {n_splits}")
    y = np.asarray(y)
    codes = np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    n_groups = codes.max() + 1 if len(codes) else 0
    for label in (0, 1):
        n_lab = len(np.unique(codes[y == label]))
        if n_lab < n_splits:
            name = "harmful" if label == 1 else "benign"
            if n_lab == 0:
                raise UserError(f"no {name} prompts{where}: a probe needs prompts of both labels")
            raise UserError(f"only {n_lab} {name} prompt groups{where} for {n_splits} folds; {remedy}")
    if n_groups < n_splits:
        raise UserError(f"{n_groups} prompt groups{where} cannot fill {n_splits} folds; {remedy}")
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    test = np.zeros((n_splits, len(y)), bool)
    for f, (_, te) in enumerate(sgkf.split(np.zeros(len(y)), y, codes)):
        test[f, te] = True
    split = Split(~test, test, "grouped")
    check_grouping(split, codes)
    return split


def source_split(sources: np.ndarray, train_sources: list[str], test_sources: list[str],
                 groups: np.ndarray | None = None) -> Split:
    """One fold: train on rows from ``train_sources``, test on rows from ``test_sources``. With ``groups``,
    training rows whose prompt also occurs in the test part are dropped (no prompt on both sides)."""
    sources = np.asarray(sources).astype(str)
    known = set(sources.tolist())
    unknown = sorted((set(train_sources) | set(test_sources)) - known)
    if unknown:
        raise UserError(f"unknown sources {unknown}; the store has {sorted(known)}")
    if set(train_sources) & set(test_sources):
        raise UserError("train and test sources overlap")
    train = np.isin(sources, train_sources)
    test = np.isin(sources, test_sources)
    if groups is not None:
        train &= ~np.isin(np.asarray(groups), np.asarray(groups)[test])
    return Split(train[None], test[None], "by-source")


def ungrouped_pair_folds(n_pairs: int, n_splits: int = 5, seed: int = 0) -> Split:
    """Plain K-fold over flattened (row, depth) pairs: LEAKS near-duplicate depths; for the leakage control."""
    test = np.zeros((n_splits, n_pairs), bool)
    for f, (_, te) in enumerate(KFold(n_splits, shuffle=True, random_state=seed).split(np.zeros(n_pairs))):
        test[f, te] = True
    return Split(~test, test, "ungrouped")


def check_grouping(split: Split, groups: np.ndarray) -> None:
    """Raise if a prompt is in train and test of one fold, or in the test part of two folds."""
    codes = np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    n_groups = codes.max() + 1
    for f in range(split.n_folds):
        in_train = np.bincount(codes[split.train[f]], minlength=n_groups) > 0
        in_test = np.bincount(codes[split.test[f]], minlength=n_groups) > 0
        if (in_train & in_test).any():
            raise AssertionError(f"fold {f}: a prompt is in both train and test")
    tested = np.stack([np.bincount(codes[split.test[f]], minlength=n_groups) > 0 for f in range(split.n_folds)])
    if (tested.sum(0) > 1).any():
        raise AssertionError("a prompt is tested in two folds")
