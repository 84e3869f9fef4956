"""What the numbers in a server's answer are, and the probabilities the run needs from them.

Servers send what their model's last layer gives: probabilities (a softmax in the model or the
handler), logits (most exported classifiers: Triton, MLServer and KServe pass them through), or
log-probabilities. ``--scores`` names the kind; ``auto`` decides on the first answer for the formats
that pass on the model's outputs (``oip-v2``, ``kserve-v1``; the others are probabilities by their
own definition), where that is safe: rows of values in [0, 1] that sum to 1 are probabilities, and a row with a negative value or a
value above 1 cannot be, so it is taken as logits. Logits and log-probabilities both become
probabilities by a softmax over the labels (a softmax of log-probabilities gives back the
probabilities). Values in [0, 1] whose rows do not sum to 1 (independent sigmoids, a top-k answer
padded with zeros) are neither, and are refused with the fix named.
"""

from __future__ import annotations

import numpy as np

from backends.errors import ConfigurationError, ScoresError

SCORE_KINDS = ("auto", "probabilities", "logits", "log-probabilities")
SUM_TOLERANCE = 1e-3  # how far a row of probabilities may sum from 1 (float32 sums of 1,000 labels: ~1e-5)


def check_kind(kind: str) -> str:
    if kind not in SCORE_KINDS:
        raise ConfigurationError(f"--scores {kind!r} is not a kind of scores; use one of {', '.join(SCORE_KINDS)}")
    return kind


def are_probabilities(scores: np.ndarray) -> bool:
    """Whether every row is in [0, 1] and sums to 1 (within ``SUM_TOLERANCE``)."""
    return bool(np.all(scores >= 0) and np.all(scores <= 1)
                and np.all(np.abs(scores.sum(axis=1) - 1) <= SUM_TOLERANCE))


def detect(scores: np.ndarray) -> str:
    """The kind of a first answer: 'probabilities' or 'logits'; refuses what could be either or neither."""
    if are_probabilities(scores):
        return "probabilities"
    if np.any(scores < 0) or np.any(scores > 1):
        return "logits"
    sums = scores.sum(axis=1)
    raise ScoresError(f"its scores lie in [0, 1] but a row sums to {sums[np.argmax(np.abs(sums - 1))]:.4g}, not 1: "
                      "neither probabilities nor logits can be told apart from that; if they are logits pass "
                      "--scores logits, if probabilities of only some labels, --scores probabilities")


def to_probabilities(scores: np.ndarray, kind: str) -> np.ndarray:
    """Probabilities from scores of ``kind`` ('probabilities' are checked, the others softmaxed per row)."""
    if kind == "probabilities":
        if not np.all(scores >= 0):
            raise ScoresError("it returned negative scores, which probabilities cannot be; if the server sends "
                              "logits or log-probabilities, pass --scores logits (or --scores auto)")
        return scores
    shifted = scores - scores.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)
