"""The bucket rule: which tuned length serves a requested sequence length.

Profiles are tuned at a few lengths (say 8k, 32k, 128k). For a request of ``seq_len`` tokens,
`choose_bucket` returns:

1. the **largest tuned length not above** ``seq_len``, if there is one;
2. otherwise the **smallest tuned length above** it.

Why the largest length below: SampleAttention's parameters are fractions of the length
(window_ratio, sample_ratio) and a mass target (alpha). Attention grows sparser as the context
grows, so a configuration that met the accuracy budget at a shorter length keeps it at a longer
one, while the converse does not hold. Falling back to a longer length is the only choice
left when the request is shorter than every tuned length.

The choice is *far* when the tuned length and ``seq_len`` differ by more than a factor
``far_ratio`` (2 by default); `ProfileStore.get_profile` then emits a
`ProfileDistanceWarning` that says to tune that length.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["BucketChoice", "DEFAULT_FAR_RATIO", "choose_bucket"]

#: Ratio between the requested and the tuned length above which the choice is "far".
DEFAULT_FAR_RATIO = 2.0


@dataclass(frozen=True)
class BucketChoice:
    """The outcome of the bucket rule.

    Attributes:
        length: the tuned length chosen.
        requested: the length asked for.
        exact: ``length == requested``.
        ratio: ``max(length, requested) / min(length, requested)``, >= 1.
        far: ``ratio > far_ratio``.
    """

    length: int
    requested: int
    exact: bool
    ratio: float
    far: bool


def choose_bucket(
    tuned: Iterable[int], seq_len: int, *, far_ratio: float = DEFAULT_FAR_RATIO
) -> BucketChoice | None:
    """Apply the bucket rule; ``None`` when nothing is tuned.

    >>> choose_bucket([8192, 32768], 40000).length
    32768
    >>> choose_bucket([8192, 32768], 4096).length
    8192
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len={seq_len} must be positive")
    if far_ratio < 1.0:
        raise ValueError(f"far_ratio={far_ratio} must be at least 1")
    lengths = sorted(set(int(n) for n in tuned))
    if not lengths:
        return None
    below = [n for n in lengths if n <= seq_len]
    length = below[-1] if below else lengths[0]
    ratio = max(length, seq_len) / min(length, seq_len)
    return BucketChoice(
        length=length, requested=seq_len, exact=length == seq_len, ratio=ratio, far=ratio > far_ratio
    )
