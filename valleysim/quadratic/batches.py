"""Exact enumeration of mini-batches (the oracle for small N)."""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.special import gammaln

from valleysim.errors import UserInputError, check_batch_size
from valleysim.theory import check_scheme

MAX_BATCHES = 2_000_000


def count_batches(N: int, S: int, scheme: str) -> int:
    """Number of distinct one-step batches: C(N, S) subsets or C(N + S - 1, S) multisets."""
    if scheme == "with_replacement":
        return math.comb(N + S - 1, S)
    return math.comb(N, S)


def enumerate_batches(N: int, S: int, scheme: str = "without_replacement") -> tuple[np.ndarray, np.ndarray]:
    """All one-step batches with their probabilities.

    Returns (idx (B, S) int, prob (B,)): uniform S-subsets without replacement
    (also the marginal law of one reshuffled batch), or S-multisets with
    multinomial probabilities S! / prod(m_k!) / N^S with replacement.
    """
    check_scheme(scheme)
    check_batch_size(S, N, allow_above_n=scheme == "with_replacement")
    B = count_batches(N, S, scheme)
    if B > MAX_BATCHES:
        raise UserInputError(f"exact enumeration needs {B} batches (> {MAX_BATCHES}); use a Monte Carlo estimate")
    if scheme != "with_replacement":
        idx = np.array(list(itertools.combinations(range(N), S)), dtype=np.int64)
        return idx, np.full(B, 1.0 / B)
    idx = np.array(list(itertools.combinations_with_replacement(range(N), S)), dtype=np.int64)
    counts = np.zeros((B, N))
    np.add.at(counts, (np.arange(B)[:, None], idx), 1.0)
    log_w = gammaln(S + 1) - gammaln(counts + 1).sum(axis=1)
    return idx, np.exp(log_w - S * math.log(N))
