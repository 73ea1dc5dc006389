"""The suite's targets table: the lines its cases carry (`suite_cases.Target`) and the lines
that read several rows of a part (`SUMMARIES`, named by `suite_cases.Part.summary`).

Every line is ``{"target", "value", "met", "note"}``; ``met`` is True, False, or None where the
line reports a value without a bound.
"""

from __future__ import annotations

import math
from typing import Callable

from .suite_cases import GRID_128K, MID_POINTS, Case, Target, length_word

__all__ = ["SUMMARIES", "case_targets", "fmt", "suite_targets"]


def fmt(value, unit: str = "") -> str:
    """A number in 3 significant digits (whole above 1000), ``-`` for a missing one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return f"{value:.3g}{unit}" if abs(value) < 1000 else f"{value:.0f}{unit}"


def _ge(value, bound: float) -> bool | None:
    return None if not isinstance(value, (int, float)) else bool(value >= bound)


def _line(target: str, value: str, met: bool | None, note: str = "") -> dict:
    return {"target": target, "value": value, "met": met, "note": note}


def word(row: dict) -> str:
    """How a row's label names its inputs: ``real-mid``, ``synthetic``, ``synthetic(for mid)``."""
    label = row.get("label", "")
    for candidate in ("synthetic(for mid)", "real-mid", "real-late", "synthetic"):
        if f" {candidate} " in f" {label} ":
            return candidate
    return row.get("inputs", "")


def _point(r: dict) -> str:
    return f"w{r['window_ratio']:.0%} s{r['sample_ratio']:.0%}"


def case_targets(case: Case, row: dict) -> list[dict]:
    """The lines of ``case``'s own targets, read from its row."""
    out = []
    for t in case.targets:
        value = row.get(t.field)
        if value is None and t.at_most:  # a bound on something not measured here (memory on the CPU)
            continue
        shown = value * 100 if t.percent and isinstance(value, (int, float)) else value
        met = None if t.bound is None or not isinstance(value, (int, float)) else \
            bool(value <= t.bound) if t.at_most else bool(value >= t.bound)
        note = f"density {row['density']:.3f}" if "density" in row else ""
        if t.field == "plan_share":
            note = f"plan {row['plan_ms']:.1f} of {row['total_ms']:.1f} ms"
        value_text = fmt(shown, t.unit) + ("" if t.percent else f", error {row['error']:.4f}")
        out.append(_line(t.name.format(word=word(row)), value_text, met, note))
    return out


def _alpha099(rows: list[dict]) -> list[dict]:
    choice = next((r for r in rows if r.get("choice")), None)
    if choice is None:
        return []
    ref = rows[0]
    return [_line(f"128K real-mid a0.99 >= 2x cuDNN ({_point(choice)})",
                  fmt(choice.get("speedup_vs_cudnn"), "x") + f", error {choice['error']:.4f}",
                  _ge(choice.get("speedup_vs_cudnn"), 2.0), f"reference error (w8% s5%) {ref['error']:.4f}")]


def _breakeven(rows: list[dict]) -> list[dict]:
    out = []
    for kind in ("real", "synthetic"):
        found = sorted((r for r in rows if word(r).startswith(kind)), key=lambda r: r["seqlen"])
        if found:
            speed = ", ".join(f"{length_word(r['seqlen'])} {fmt(r.get('speedup_vs_cudnn'), 'x')}" for r in found)
            even = next((r["seqlen"] for i, r in enumerate(found)
                         if all((x.get("speedup_vs_cudnn") or 0) >= 1.0 for x in found[i:])), None)
            out.append(_line(f"break-even vs cuDNN ({kind})", f"{even} tokens" if even else "not reached in range",
                             None, speed))
    return out


def _cudnn_of(r: dict):
    return r.get("speedup_vs_cudnn_measured") or r.get("speedup_vs_cudnn")


def _huge(rows: list[dict]) -> list[dict]:
    best = max(rows, key=lambda r: _cudnn_of(r) or 0)
    how = "measured cuDNN" if best.get("speedup_vs_cudnn_measured") or not best.get("cudnn_extrapolated") else \
        "cuDNN EXTRAPOLATED from 512K"
    return [_line(f"1M a0.95 >= 10x cuDNN ({_point(best)})", fmt(_cudnn_of(best), "x") + f", error {best['error']:.4f}",
                  _ge(_cudnn_of(best), 10.0), f"{how}; operator {best['total_ms']:.0f} ms, density {best['density']:.3f}")]


def _flex(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        bs = r.get("flex_block_sparse_ms")
        out.append(_line(
            f"128K {word(r)} a0.95 w8% s5% vs FlexAttention (dense causal / block-sparse, same selection in 128-blocks)",
            f"{fmt(r.get('speedup_vs_flex'), 'x')} / {fmt(r.get('speedup_vs_flex_block_sparse'), 'x')}", None,
            f"operator {r['total_ms']:.1f} ms; Flex dense {fmt(r.get('flex_ms'), ' ms')}, block-sparse "
            + (bs if isinstance(bs, str) else fmt(bs, " ms")) + f"; cuDNN {fmt(r.get('cudnn_ms'), ' ms')}, "
            f"flash {fmt(r.get('flash_ms'), ' ms')} (same process)"))
    return out


def _alphas(rows: list[dict], every: list[dict]) -> list[dict]:
    out = []
    for band in ("mid", "late"):
        found = [r for r in rows if r.get("band") == band]
        if not found:
            continue
        ref = next((r for r in every if r.get("part") in ("main128k", "flex128k") and r.get("band") == band
                    and word(r) == word(found[0]) and r.get("geometry") == found[0].get("geometry")), None)
        out.append(_line(f"128K {word(found[0])} w8% s5%: speed-up by alpha", "; ".join(
            f"a{r['alpha']:.2f} {fmt(r.get('speedup_vs_cudnn'), 'x')} (error {r['error']:.4f}, density "
            f"{r['density']:.3f})" for r in found + ([ref] if ref else [])), None, "x cuDNN"))
    return out


def _grid(rows: list[dict]) -> list[dict]:
    ref, best = rows[0], next((r for r in rows if r.get("choice")), rows[0])
    fastest = min(rows, key=lambda r: r["total_ms"])
    return [_line(f"128K {word(ref)} a0.95 window x sample grid: fastest with error <= w8% s5%",
                  f"{_point(best)}: {fmt(best.get('speedup_vs_cudnn'), 'x')} cuDNN, error {best['error']:.4f}", None,
                  f"w8% s5%: {fmt(ref.get('speedup_vs_cudnn'), 'x')}, error {ref['error']:.4f}; fastest: "
                  f"{_point(fastest)} {fmt(fastest.get('speedup_vs_cudnn'), 'x')}, error {fastest['error']:.4f}; "
                  f"{len(rows)} of {len(GRID_128K)} points")]


def _batch(rows: list[dict], every: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        one = next((x for x in every if x.get("part") == "breakeven" and x["seqlen"] == r["seqlen"]
                    and word(x) == "real-mid" and word(r).startswith("real")), None)
        out.append(_line(f"{length_word(r['seqlen'])} batch {r['batch']} {word(r)} a0.95 w8% s5%",
                         f"{fmt(r.get('speedup_vs_cudnn'), 'x')} cuDNN, {fmt(r.get('speedup_vs_flash'), 'x')} flash, "
                         f"error {r['error']:.4f}", None, f"operator {r['total_ms']:.1f} ms, density {r['density']:.3f}"
                         + (f"; batch 1 (breakeven): {fmt(one.get('speedup_vs_cudnn'), 'x')}" if one else "")))
    return out


def _by_length(rows: list[dict], every: list[dict]) -> list[dict]:
    out = []
    for window, sample in MID_POINTS:
        by_length: dict[int, dict] = {}
        for r in every:
            if (r.get("part") in ("main128k", "flex128k", "mid512k", "1m") and r.get("band", "mid") == "mid"
                    and r.get("batch", 1) == 1 and (r["window_ratio"], r["sample_ratio"]) == (window, sample)
                    and r["alpha"] == 0.95):
                by_length.setdefault(r["seqlen"], r)
        if not any(r.get("part") == "mid512k" for r in by_length.values()):
            continue
        ordered = sorted(by_length.items())
        out.append(_line(
            f"speed-up vs cuDNN by length, mid band, a0.95 w{window:.0%} s{sample:.0%}",
            ", ".join(f"{length_word(n)} {fmt(_cudnn_of(r), 'x')}"
                      + ("*" if r.get("cudnn_extrapolated") and not r.get("speedup_vs_cudnn_measured") else "")
                      for n, r in ordered), None,
            "cuDNN measured at each length (* = extrapolated); "
            + ", ".join(f"{length_word(n)} error {r['error']:.3f}" for n, r in ordered)))
    return out


#: name -> fn(rows of the part, every case row) -> lines
SUMMARIES: dict[str, Callable[[list[dict], list[dict]], list[dict]]] = {
    "alpha099": lambda rows, every: _alpha099(rows),
    "breakeven": lambda rows, every: _breakeven(rows),
    "1m": lambda rows, every: _huge(rows),
    "flex128k": lambda rows, every: _flex(rows),
    "alphas128k": _alphas,
    "grid128k": lambda rows, every: _grid(rows),
    "batch4": _batch,
    "mid512k": _by_length,
}


def _compile_lines(rows: list[dict], geometry: str) -> list[dict]:
    """The first call's time, and whether a new length recompiled the kernels (the first case of
    each new length in the run's geometry at batch 1, the default selection)."""
    out = []
    first = next((r for r in rows if "first_call_s" in r), None)
    if first:
        out.append(_line("first-call (compile) time", fmt(first["first_call_s"], " s"), None, first.get("label", "")))
    seen, recompiles = set(), []
    for r in rows:
        if r.get("geometry") != geometry or r.get("batch", 1) != 1:
            continue
        if seen and r["seqlen"] not in seen and r.get("kernels_compiled") is not None and not r.get("options"):
            recompiles.append((r["seqlen"], r["kernels_compiled"], r["first_call_s"]))
        seen.add(r["seqlen"])
    if recompiles:
        out.append(_line("no recompilation per new length", ", ".join(
            f"{n}: {c} compiled, first call {t:.2f} s" for n, c, t in recompiles), all(c == 0 for _, c, _ in recompiles),
            "first case at each new length after the first"))
    return out


def suite_targets(measured: list[tuple[Case, dict]], summaries: dict[str, str], geometry: str) -> list[dict]:
    """Every line: each case's own targets in run order, then each part's summary in the order
    of ``summaries`` (part -> summary name), then the compile lines."""
    out = [line for case, row in measured for line in case_targets(case, row)]
    every = [row for _, row in measured]
    for part, name in summaries.items():
        rows = [row for row in every if row.get("part") == part]
        if rows:
            out += SUMMARIES[name](rows, every)
    return out + _compile_lines(every, geometry)
