"""Launch parameters of every kernel, in one table: tile sizes, warps and pipeline stages.

Each launcher asks `launch_for` and launches with the `Launch` it returns: the caller's tiles (or
the table's defaults) cut down to what fits, and the warps and stages of that tile, unless the
caller named them. The table (`tile_rule`) is keyed by launcher, head-dim bucket and input width:

* head dim: up to 64, 65-128, above 128 (`head_bucket`). The kernels pad the head dim to
  ``BLOCK_D``, a power of two (16-64, 128, 256): a 256-wide head holds twice the registers and
  shared memory per row of a 128-wide one.
* width: ``"fp32"`` (4-byte inputs) or ``"16-bit"`` (bf16, fp16): fp32 tiles take twice the
  shared memory.

No tile depends on the sequence length: the kernels loop over the keys, and a length only changes
how many programs run.

The values are measured or forced on the H200 (sm_90, 227 KiB of shared memory per block):
``python -m sampleattn.bench.tile_sweep`` and ``python -m sampleattn.bench.plan_sweep`` measure
them (docs/benchmarks.md); ``scripts/aot_compile_check.py`` compiles every launch of the CPU tests
for sm_90 and reports the shared memory each needs. This module imports neither torch nor triton,
so the operator's config reads its defaults from here without loading the kernels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "BLOCK_M",
    "BLOCK_N",
    "SCORES_BLOCK_N",
    "SMALL_BLOCK",
    "Launch",
    "TileRule",
    "head_bucket",
    "launch_for",
    "operator_block_m",
    "padded_head_dim",
    "tile_rule",
    "warps_for",
    "width",
]

#: The operator's stage-3 tiles (`SampleAttentionConfig.block_m`, ``block_n``): 128 x 128 with 8
#: warps was the fastest tile of the stage-3 sweep on the H200 (docs/benchmarks.md).
BLOCK_M = 128
BLOCK_N = 128

#: The tiles a launcher takes when its caller names none, and the row granularity of hand-built
#: plans (`sampleattn.baselines`): 64 x 64 launches as it is at every head dim and width (no cap
#: of the table cuts it).
SMALL_BLOCK = 64

#: Key tile of `column_scores` (what `score_tile_ranges` must be computed with). On the H200 at
#: 128K (Llama-3-8B geometry, 64 sampled rows per program) 128 keys with 4 warps and 2 stages took
#: 7.5 ms against 8.3 ms for 64 keys (`python -m sampleattn.bench.plan_sweep`, docs/benchmarks.md).
SCORES_BLOCK_N = 128

HeadBucket = Literal[64, 128, 256]
Width = Literal["fp32", "16-bit"]
Kernel = Literal["sparse_attention", "rescore_candidates", "sampled_row_stats", "column_scores", "stripe_mass",
                 "block_scores", "select_key_blocks"]

#: Row tiles up to this many rows run 4 warps, larger ones 8 (`warps_for`, ``warps="rows"``).
_NARROW_ROWS = 64


def padded_head_dim(head_dim: int) -> int:
    """The head dim padded to the kernels' ``BLOCK_D``: a power of two, at least 16."""
    return max(16, 1 << (head_dim - 1).bit_length())


def head_bucket(head_dim: int) -> HeadBucket:
    """64, 128 or 256: the bucket of head dims up to 64, 65-128 and above 128 (``BLOCK_D`` 16-64,
    128, and 256 or more)."""
    padded = padded_head_dim(head_dim)
    return 64 if padded <= 64 else 128 if padded == 128 else 256


def width(dtype) -> Width:
    """``"fp32"`` for a 4-byte input dtype (``torch.float32``), ``"16-bit"`` for bf16 and fp16."""
    return "fp32" if dtype.itemsize == 4 else "16-bit"


@dataclass(frozen=True)
class TileRule:
    """How one launcher launches its kernel for one head-dim bucket and input width.

    Attributes:
        block_m: query rows per tile when the caller names none (None: the caller always does).
        block_n: keys per tile when the caller names none.
        wide_block_n: keys per tile, when the caller names none, for row tiles of more than 64
            rows (None: ``block_n`` whatever the rows).
        block_c: entries per program along the kernel's own axis (candidate columns, key blocks,
            scores) when the caller names none.
        max_block_m, max_block_n: the largest tiles that fit; a caller's larger tile is cut down
            to them (None: no limit).
        num_stages: software-pipeline stages when the caller names none.
        warps: when the caller names none, ``"rows"``: 4 warps for tiles of up to 64 rows, 8
            above; ``"elements"``: 8 warps once the tile holds 128 x 128 elements (rows x
            ``BLOCK_D``), else 4; or a fixed count.
    """

    block_m: int | None = None
    block_n: int | None = None
    wide_block_n: int | None = None
    block_c: int | None = None
    max_block_m: int | None = None
    max_block_n: int | None = None
    num_stages: int = 2
    warps: Literal["rows", "elements"] | int = "rows"


#: Each launcher's rule for every head dim and width, before `_EXCEPTIONS`.
_BASE: dict[str, TileRule] = {
    # Stage 3. Warps measured on the H200 (docs/benchmarks.md): 64-row tiles want 4 (8 halve the
    # throughput), 128-row tiles want 8.
    "sparse_attention": TileRule(block_m=SMALL_BLOCK, block_n=SMALL_BLOCK, num_stages=3),
    # The rescoring selection: its log-sum-exp pass over the candidates is stage 3 with 64-key
    # tiles (block_n); `candidate_mass_kernel` then takes 64 candidates per program (block_c).
    "rescore_candidates": TileRule(block_n=64, block_c=64),
    # Stage 1's row statistics: as many heads of a KV group per program as fit in a 128-row tile
    # (`sampling.row_stats_heads`). The H200 sweep (`python -m sampleattn.bench.plan_sweep`) at
    # 128K: 128-row tiles of 2 heads with 128-key tiles, 8 warps, 2 stages took 8.0 ms; one
    # head's 64 rows with 64-key tiles, 4 warps, 9.8 ms.
    "sampled_row_stats": TileRule(block_n=64, wide_block_n=128),
    "column_scores": TileRule(block_n=SCORES_BLOCK_N),
    # Triton's default stages (3 on CUDA), which this pass has always run with.
    "stripe_mass": TileRule(block_n=64, num_stages=3),
    "block_scores": TileRule(block_c=64, warps="elements"),
    # Reads fp32 scores whatever the inputs; Triton's default stages (3 on CUDA).
    "select_key_blocks": TileRule(block_c=1024, num_stages=3, warps=4),
}

#: What differs from `_BASE` for one (launcher, head bucket, width); width None: both widths.
_EXCEPTIONS: dict[tuple[str, HeadBucket, Width | None], dict] = {
    # fp32 inputs take twice the shared memory: 128x128 tiles in 3 stages need 384 KiB, over an
    # H200 block's 227 KiB; 128x64 tiles in 2 stages need 161 KiB (scripts/aot_compile_check.py).
    ("sparse_attention", 128, "fp32"): {"max_block_n": 64, "num_stages": 2},
    # A 256-wide head's fp32 accumulator for 128 rows does not fit in registers: halve the tiles.
    ("sparse_attention", 256, None): {"max_block_m": 64, "max_block_n": 64, "num_stages": 2},
    # The ranking rows run in stage 3's row tiles, at most 64 rows for 256-wide heads; a larger
    # block_m is an error there (`sampleattn.rescoring.ranking_block` asks for at most this).
    ("rescore_candidates", 256, None): {"max_block_m": 64},
    # fp32 at head dim 256: two stages of 128-key tiles need 256 KiB of shared memory, over an
    # H200 block's 227 KiB (scripts/aot_compile_check.py); 64-key tiles need 128 KiB.
    ("sampled_row_stats", 256, "fp32"): {"wide_block_n": 64},
}


def tile_rule(kernel: Kernel, head_dim: int | None = None, dtype=None) -> TileRule:
    """The table's entry for ``kernel`` (a launcher's name) at ``head_dim`` and ``dtype``'s width;
    None for either takes the rule common to all of them (the head dim and width change nothing
    for ``select_key_blocks``)."""
    try:
        rule = _BASE[kernel]
    except KeyError:
        raise ValueError(f"no tile rule for kernel {kernel!r}; known: {', '.join(_BASE)}") from None
    if head_dim is None:
        return rule
    bucket = head_bucket(head_dim)
    widths = (None,) if dtype is None else (None, width(dtype))
    for key in ((kernel, bucket, w) for w in widths):
        rule = dataclasses.replace(rule, **_EXCEPTIONS.get(key, {}))
    return rule


@dataclass(frozen=True)
class Launch:
    """The tiles, warps and stages of one launch (None for a tile the kernel does not take)."""

    block_m: int | None
    block_n: int | None
    block_c: int | None
    num_warps: int
    num_stages: int


def warps_for(rule: TileRule, rows: int, head_dim: int | None) -> int:
    """The warps of ``rule`` for a tile of ``rows`` rows (and the padded ``head_dim`` columns)."""
    if rule.warps == "rows":
        return 4 if rows <= _NARROW_ROWS else 8
    if rule.warps == "elements":
        if head_dim is None:
            raise ValueError("warps by tile elements need the head dim")
        return 8 if rows * padded_head_dim(head_dim) >= 128 * 128 else 4
    return rule.warps


def _cut(tile: int | None, limit: int | None) -> int | None:
    return tile if tile is None or limit is None else min(tile, limit)


def launch_for(
    kernel: Kernel, *, head_dim: int | None = None, dtype=None, block_m: int | None = None,
    block_n: int | None = None, block_c: int | None = None, rows: int | None = None,
    num_warps: int | None = None, num_stages: int | None = None,
) -> Launch:
    """What ``kernel``'s launcher launches with, for inputs of ``head_dim`` and ``dtype``.

    Args:
        block_m, block_n, block_c: the caller's tiles; None takes the rule's. A tile above the
            rule's ``max_block_m`` / ``max_block_n`` is cut down to it.
        rows: rows of the launched tile when they are not ``block_m`` (stage 1: sampled rows of
            every head of a program); they choose ``wide_block_n`` and the warps.
        num_warps, num_stages: the caller's; None takes the rule's.
    """
    rule = tile_rule(kernel, head_dim, dtype)
    block_m = _cut(rule.block_m if block_m is None else block_m, rule.max_block_m)
    rows = block_m if rows is None else rows
    if block_n is None:
        wide = rule.wide_block_n is not None and rows is not None and rows > _NARROW_ROWS
        block_n = rule.wide_block_n if wide else rule.block_n
    block_n = _cut(block_n, rule.max_block_n)
    if num_warps is None:
        if rows is None and rule.warps in ("rows", "elements"):
            raise ValueError(f"{kernel}: the warps follow the tile's rows; pass block_m or rows")
        num_warps = warps_for(rule, rows, head_dim)
    return Launch(block_m=block_m, block_n=block_n, block_c=rule.block_c if block_c is None else block_c,
                  num_warps=num_warps, num_stages=rule.num_stages if num_stages is None else num_stages)


def operator_block_m(segment_rows: int) -> int:
    """The operator's stage-3 query tile for a plan of ``segment_rows`` rows per column set: the
    largest power of two from `BLOCK_M` down to 16 that divides it."""
    block = BLOCK_M
    while segment_rows % block:
        block //= 2
        if block < 16:
            raise ValueError(f"segment_rows={segment_rows} is not a multiple of 16: no query tile divides it")
    return block
