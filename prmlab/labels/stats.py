"""Statistics and pictures of line labels: categories, where the first -1 falls, binary search vs Monte-Carlo.

All functions take lists of :class:`prmlab.records.LineLabels` (as read from ``labels.jsonl``); the plotting
functions draw on a given matplotlib ``Axes`` (or a new figure) and return it, so notebooks only call them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from prmlab.labels.search import first_negative, is_monotone
from prmlab.plots import COLORS, axes
from prmlab.records import CATEGORIES, LineLabels



def category_shares(records: Sequence[LineLabels]) -> dict[str, float]:
    """Share of responses in each category (correct / revised / wrong); all 0 for no records."""
    counts = Counter(r.category for r in records)
    n = len(records)
    return {c: (counts.get(c, 0) / n if n else 0.0) for c in CATEGORIES}


def n_steps(record: LineLabels) -> int:
    """Number of code (non-neutral) lines: the steps binary search runs over."""
    return int(record.meta.get("n_steps", sum(1 for v in record.labels if v != 0)))


def categories_by_length(records: Sequence[LineLabels]) -> dict[int, dict[str, float]]:
    """Category shares per number of code lines of the response."""
    groups: dict[int, list[LineLabels]] = defaultdict(list)
    for r in records:
        groups[n_steps(r)].append(r)
    return {t: category_shares(rs) for t, rs in sorted(groups.items())}


def first_negative_relative(records: Sequence[LineLabels]) -> list[float]:
    """Where the first -1 falls, relative to length: (index of first -1 line + 1) / T, for responses that have one.

    1/T means the very first line already made the program unrecoverable; 1.0 means only the last line did.
    """
    out = []
    for r in records:
        i = first_negative(r.labels)
        if i is not None and r.labels:
            out.append((i + 1) / len(r.labels))
    return out


def agreement(binary: Sequence[LineLabels], mc: Sequence[LineLabels]) -> dict[str, Any]:
    """Agreement of binary-search labels with Monte-Carlo hard labels on the same failing responses.

    ``first_neg_exact``: share whose first -1 is on the same line (both None counts as agreement);
    ``first_neg_exact_monotone``: the same on responses whose MC hard labels are monotone (no +1 after a -1, the
    assumption binary search relies on); ``line_agreement``: share of non-neutral lines with the same sign;
    ``mc_monotone``: share of responses with monotone MC labels.
    """
    by_id = {r.response_id: r for r in mc}
    pairs = [(b, by_id[b.response_id]) for b in binary if b.response_id in by_id and b.category != "correct"]
    same = [first_negative(b.labels) == first_negative(m.labels) for b, m in pairs]
    mono = [is_monotone(m.labels) for _, m in pairs]
    same_mono = [s for s, ok in zip(same, mono) if ok]
    line_pairs = [(x, y) for b, m in pairs for x, y in zip(b.labels, m.labels) if x != 0 and y != 0]
    return {
        "n": len(pairs),
        "first_neg_exact": _mean(same),
        "first_neg_exact_monotone": _mean(same_mono),
        "n_monotone": len(same_mono),
        "mc_monotone": _mean(mono),
        "line_agreement": _mean([(x > 0) == (y > 0) for x, y in line_pairs]),
        "category_agreement": _mean([b.category == m.category for b, m in pairs]),
    }


def cost_per_failing_response(records: Sequence[LineLabels]) -> dict[str, float]:
    """Mean oracle checks, completions, executions, cache hits and seconds per failing response."""
    failing = [r for r in records if r.category != "correct"]
    keys = ("oracle_calls", "completions_generated", "executions")
    out = {k: _mean([getattr(r, k) for r in failing]) for k in keys}
    for k in ("cache_hits", "gen_s", "exec_s"):
        out[k] = _mean([float(r.meta.get(k, 0.0)) for r in failing])
    out["n_failing"] = len(failing)
    return out


def cost_comparison(binary: Sequence[LineLabels], mc: Sequence[LineLabels]) -> dict[str, Any]:
    """Costs per failing response of both methods and how many times cheaper binary search is (MC / binary)."""
    b, m = cost_per_failing_response(binary), cost_per_failing_response(mc)
    ratio = {k: (m[k] / b[k] if b[k] else float("inf")) for k in ("completions_generated", "executions",
                                                                    "oracle_calls")}
    return {"binary": b, "mc": m, "mc_over_binary": ratio}


def _mean(xs: Sequence[float | bool]) -> float:
    return sum(float(x) for x in xs) / len(xs) if xs else float("nan")


# --------------------------------------------------------------------------------------------------------------
# Pictures


def plot_categories_by_length(records: Sequence[LineLabels], ax=None):
    """Stacked bars: share of correct / revised / wrong responses per number of code lines."""
    ax = axes(ax, (5, 3.2))[1]
    table = categories_by_length(records)
    xs = list(table)
    bottom = [0.0] * len(xs)
    for c in CATEGORIES:
        ys = [table[x][c] for x in xs]
        ax.bar(xs, ys, bottom=bottom, color=COLORS[c], label=c)
        bottom = [b + y for b, y in zip(bottom, ys)]
    ax.set(xlabel="code lines in the response", ylabel="share of responses", title="Response categories by length",
           ylim=(0, 1))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax


def plot_first_negative(records: Sequence[LineLabels], ax=None, bins: int = 10):
    """Histogram of the first -1's position relative to program length."""
    ax = axes(ax, (5, 3.2))[1]
    ax.hist(first_negative_relative(records), bins=bins, range=(0, 1), color=COLORS[-1.0], edgecolor="white")
    ax.set(xlabel="position of first -1 / number of lines", ylabel="responses",
           title="Where responses become unrecoverable")
    return ax


def plot_agreement(binary: Sequence[LineLabels], mc: Sequence[LineLabels], ax=None):
    """Scatter of the first -1 line under binary search vs Monte-Carlo (jittered; the diagonal is agreement)."""
    import random

    ax = axes(ax, (4, 4))[1]
    by_id = {r.response_id: r for r in mc}
    rng = random.Random(0)
    xs, ys, cs = [], [], []
    for b in binary:
        m = by_id.get(b.response_id)
        if m is None or b.category == "correct":
            continue
        fb, fm = first_negative(b.labels), first_negative(m.labels)
        xs.append((len(b.labels) if fb is None else fb) + 1 + rng.uniform(-0.2, 0.2))
        ys.append((len(m.labels) if fm is None else fm) + 1 + rng.uniform(-0.2, 0.2))
        cs.append("#333333" if is_monotone(m.labels) else "#d07020")
    top = max(xs + ys + [2])
    ax.plot([0, top], [0, top], color="#bbbbbb", lw=1, zorder=0)
    ax.scatter(xs, ys, s=10, c=cs, alpha=0.6)
    ax.set(xlabel="first -1 line, binary search", ylabel="first -1 line, Monte-Carlo (hard)",
           title="Binary search vs Monte-Carlo\n(orange: non-monotone MC labels)")
    return ax


def plot_cost(binary: Sequence[LineLabels], mc: Sequence[LineLabels], ax=None):
    """Bars: completions and executions per failing response for both methods."""
    ax = axes(ax, (5, 3.2))[1]
    comp = cost_comparison(binary, mc)
    keys = ("oracle_calls", "completions_generated", "executions")
    width = 0.38
    for j, (name, color) in enumerate((("binary", "#3a6ea5"), ("mc", "#999999"))):
        vals = [comp[name][k] for k in keys]
        bars = ax.bar([i + (j - 0.5) * width for i in range(len(keys))], vals, width, color=color, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(keys)), ["oracle checks", "completions", "programs judged"])
    ax.set(ylabel="per failing response", title="Labelling cost")
    ax.legend(fontsize=8)
    return ax


def plot_response_labels(record: LineLabels, ax=None, max_chars: int = 48):
    """One response line by line: its code, a coloured label cell per line, and where the search looked.

    Each binary-search check (``meta["trace"]``) is drawn at the end of the prefix it tested, numbered in the order
    made: a filled circle when some completion passed (recoverable), a cross when none did; the dashed line is m*.
    """
    lines = list(record.completions)
    ax = axes(ax, (7.5, 0.35 * len(lines) + 1.2))[1]
    for i, (line, label) in enumerate(zip(lines, record.labels)):
        y = len(lines) - 1 - i
        ax.add_patch(_rect(0, y - 0.4, 0.6, 0.8, COLORS.get(float(label), "#b0b0b0")))
        ax.text(0.3, y, f"{label:+.0f}" if label else "0", ha="center", va="center", fontsize=8, color="white")
        text = line if len(line) <= max_chars else line[:max_chars - 1] + "…"
        ax.text(0.8, y, f"{i + 1:>2}  {text}", va="center", family="monospace", fontsize=8)
    for j, (m, ok) in enumerate(record.meta.get("trace", []), start=1):
        y = len(lines) - m
        ax.plot(-0.5, y, marker="o" if ok else "x", color=COLORS[1.0] if ok else COLORS[-1.0], ms=7, mew=2)
        ax.text(-0.85, y, str(j), ha="right", va="center", fontsize=7, color="#555555")  # order of the check
    if record.category != "correct":
        ax.axhline(len(lines) - record.last_recoverable - 0.5, color="#333333", ls="--", lw=1)
    ax.set_xlim(-1.3, 10)
    ax.set_ylim(-0.8, len(lines) - 0.2)
    ax.axis("off")
    ax.set_title(f"{record.response_id}  [{record.category}]  m* = {record.last_recoverable}, "
                 f"{record.oracle_calls} checks, {record.completions_generated} completions", fontsize=9)
    return ax


def _rect(x, y, w, h, color):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, color=color)
