"""The stratified train/val/test split every built-in and file dataset uses (fixed seed)."""

from __future__ import annotations

import numpy as np

from ..core.errors import InputError

SPLIT_SEED = 0  # the train/val/test split never depends on the training seed
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)


def carve(idx: np.ndarray, y: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of `idx` (labels y[idx]) into (kept, carved off `fraction`) with the fixed seed."""
    from sklearn.model_selection import train_test_split

    try:
        keep, take = train_test_split(idx, test_size=fraction, stratify=y[idx], random_state=SPLIT_SEED)
    except ValueError as e:
        raise InputError(f"dataset too small to split into train/val/test: {e}") from None
    return keep, take


def split_indices(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified train/val/test indices in SPLIT_FRACTIONS, independent of the training seed."""
    f_train, f_val, f_test = SPLIT_FRACTIONS
    trval, test = carve(np.arange(len(y)), y, f_test)
    train, val = carve(trval, y, f_val / (f_train + f_val))
    return train, val, test


