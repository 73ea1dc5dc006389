"""Needle in a haystack: a key fact hidden at a depth of the essays, retrieved greedily.

The needle is ``" The special magic number for {city} is {number}. "`` (a 7-digit number drawn
per (length, depth) from a seed), inserted at the first sentence end after ``depth`` of the
haystack; the prompt ends with the question and the start of the answer, so a base or instruct
model completes it without a chat template. Score: 1 when the exact number appears in the greedy
continuation, else 0 (exact recovery of the key fact); full attention is scored the same way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["NeedlePrompt", "haystack_ids", "needle_prompt", "score_answer"]

CITIES = ["Lisbon", "Nairobi", "Osaka", "Quito", "Tbilisi", "Oslo", "Lima", "Hanoi", "Dakar", "Perth", "Riga"]


@dataclass(frozen=True)
class NeedlePrompt:
    """One needle test: ``input_ids`` (1, length) int64, the answer to find, where it sits."""

    input_ids: torch.Tensor
    answer: str
    length: int
    depth: float
    needle_position: int


def haystack_ids(tokenizer: Any, text: str, n_tokens: int) -> list[int]:
    """The first ``n_tokens`` token ids of ``text`` (repeated if it is too short)."""
    chars = max(4096, n_tokens * 6)
    ids: list[int] = []
    while len(ids) < n_tokens:
        piece = text[:chars]
        ids = tokenizer(piece, add_special_tokens=False).input_ids
        if len(ids) < n_tokens and chars >= len(text):
            text = text + "\n\n" + text
        chars *= 2
    return ids[:n_tokens]


def needle_prompt(tokenizer: Any, haystack: list[int], length: int, depth: float, *, seed: int = 0) -> NeedlePrompt:
    """Build the prompt of ``length`` tokens with the needle at ``depth`` (0..1) of the haystack."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth={depth} must be in [0, 1]")
    rng = random.Random(f"{seed}-{length}-{depth:.4f}")
    city = rng.choice(CITIES)
    number = str(rng.randint(1_000_000, 9_999_999))
    needle = tokenizer(f" The special magic number for {city} is {number}. ", add_special_tokens=False).input_ids
    question = tokenizer(
        f"\n\nWhat is the special magic number for {city} mentioned in the text above? "
        f"The special magic number for {city} is", add_special_tokens=False).input_ids
    body = length - len(needle) - len(question)
    if body <= 0:
        raise ValueError(f"length={length} is too short for the needle and the question")
    if len(haystack) < body:
        raise ValueError(f"the haystack has {len(haystack)} tokens; {body} are needed")
    hay = haystack[:body]
    pos = int(round(depth * body))
    # move to just after the next sentence end (within 64 tokens), as the original test does
    for p in range(pos, min(pos + 64, body)):
        if "." in tokenizer.decode(hay[p - 1:p]) if p > 0 else False:
            pos = p
            break
    ids = hay[:pos] + needle + hay[pos:] + question
    return NeedlePrompt(torch.tensor([ids], dtype=torch.long), number, length, depth, pos)


def score_answer(text: str, answer: str) -> bool:
    """Exact recovery of the key fact: the number appears in the continuation."""
    return answer in text.replace(",", "")
