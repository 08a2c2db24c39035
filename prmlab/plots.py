"""Per-line views of PRM scores, and the PRM's curves.

Per-line views show a program listing with each line coloured by its PRM score, next to its label, in two forms
that need no widget runtime (so they survive a static notebook export):

    line_view_html(scores)      an HTML table with inline styles (also ``LineScores._repr_html_``)
    line_view_figure(scores)    a matplotlib figure
    token_view_html(...)        the tokens of a program with the token read for each line outlined

Curves: training and validation loss per epoch, ROC of the first-error AUC against the length-only baseline,
calibration, and the data-selection comparison. Colours run red (-1, unrecoverable) through white (0) to green
(+1, recoverable), the same in every view.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from prmlab.records import LineScores

RED = (0.84, 0.19, 0.15)
WHITE = (1.0, 1.0, 1.0)
GREEN = (0.10, 0.60, 0.31)
AMBER = (0.88, 0.63, 0.19)
GREY = (0.69, 0.69, 0.69)


def _hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in rgb)


COLORS: dict[str | float, str] = {"correct": _hex(GREEN), "revised": _hex(AMBER), "wrong": _hex(RED),
                                  1.0: _hex(GREEN), 0.0: _hex(GREY), -1.0: _hex(RED)}
"""The one palette: response categories and line labels (+1 green, 0 grey, -1 red), the ends of the score scale."""


def score_rgb(score: float, low: float = -1.0, high: float = 1.0) -> tuple[float, float, float]:
    """The colour of a score: linear from RED at ``low`` through WHITE at the midpoint to GREEN at ``high``.

    Scores outside [low, high] are clipped; a NaN score is light grey.
    """
    if score != score:  # NaN
        return (0.85, 0.85, 0.85)
    mid = (low + high) / 2
    t = max(-1.0, min(1.0, (score - mid) / ((high - low) / 2)))  # t in [-1, 1]
    end = GREEN if t >= 0 else RED
    a = abs(t)
    return tuple(round(w + a * (e - w), 4) for w, e in zip(WHITE, end))  # (1 - a) white + a end


def score_hex(score: float, low: float = -1.0, high: float = 1.0) -> str:
    """``#rrggbb`` of :func:`score_rgb`."""
    return "#" + "".join(f"{round(c * 255):02x}" for c in score_rgb(score, low, high))


def _cell(value: float | None, width: str = "4.2em") -> str:
    if value is None:
        return f'<td style="width:{width};text-align:right;color:#999;padding:0 6px">-</td>'
    return (f'<td style="width:{width};text-align:right;background:{score_hex(value)};padding:0 6px;'
            f'font-variant-numeric:tabular-nums">{value:+.2f}</td>')


def line_view_html(scores: LineScores, title: str | None = None, prompt: str | None = None) -> str:
    """An HTML table: line number, PRM score (coloured), label (coloured), and the code line (escaped).

    Only inline styles, no scripts: it renders the same in Jupyter, a static HTML export and a browser. The
    optional ``prompt`` is shown greyed above the response lines.
    """
    labels: Sequence[float | None] = scores.labels if scores.labels is not None else [None] * len(scores.lines)
    head = title if title is not None else " ".join(x for x in (scores.task_id, scores.response_id) if x)
    mono = "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px"
    rows = [f'<caption style="text-align:left;font-weight:bold;padding:2px 0">{html.escape(head)}</caption>',
            '<tr style="color:#555"><th>#</th><th>PRM</th><th>label</th><th style="text-align:left">code</th></tr>']
    for line in (prompt or "").splitlines():
        rows.append(f'<tr style="color:#999"><td></td><td></td><td></td>'
                    f'<td style="white-space:pre;padding-left:8px">{html.escape(line)}</td></tr>')
    for i, (line, s, y) in enumerate(zip(scores.lines, scores.scores, labels), start=1):
        rows.append(f'<tr><td style="color:#999;text-align:right;padding-right:4px">{i}</td>{_cell(s)}{_cell(y)}'
                    f'<td style="white-space:pre;padding-left:8px;border-left:4px solid {score_hex(s)}">'
                    f'{html.escape(line)}</td></tr>')
    return f'<table class="prmlab-lines" style="border-collapse:collapse;{mono}">' + "".join(rows) + "</table>"


def line_views_html(records: Sequence[LineScores], titles: Sequence[str] | None = None) -> str:
    """Several line views side by side (wrapping), e.g. a Correct, a Revised and a Wrong response."""
    titles = titles or [None] * len(records)
    cells = "".join(f'<div style="margin:0 24px 12px 0">{line_view_html(r, t)}</div>' for r, t in zip(records, titles))
    return f'<div style="display:flex;flex-wrap:wrap;align-items:flex-start">{cells}</div>'


def token_view_html(pieces: Sequence[str], positions: Sequence[int], labels: Sequence[float] | None = None,
                    n_prompt: int = 0) -> str:
    """The tokens of prompt + completion as boxes; the token read for line i (``positions[i]``) is outlined and
    coloured by line i's label, with the line number above it. Prompt tokens (the first ``n_prompt``) are grey.

    A newline inside a token is drawn as ``↵`` and breaks the row, so the layout follows the code.
    """
    marks: dict[int, list[int]] = {}
    for line, pos in enumerate(positions, start=1):
        marks.setdefault(pos, []).append(line)
    out = []
    for i, piece in enumerate(pieces):
        text = html.escape(piece).replace("\r", "").replace(" ", "&nbsp;").replace("\t", "&nbsp;" * 4)
        text = text.replace("\n", '↵</span><br><span style="display:inline-block">')
        style = "border:1px solid #ddd;margin:1px;padding:0 1px;display:inline-block"
        if i < n_prompt:
            style += ";color:#aaa"
        sup = ""
        if i in marks:
            lines = marks[i]
            fill = score_hex(labels[lines[-1] - 1]) if labels is not None else "#ffe08a"
            style += f";border:2px solid #333;background:{fill}"
            sup = f'<sup style="font-size:9px;color:#333">{",".join(map(str, lines))}</sup>'
        out.append(f'<span style="{style}"><span style="display:inline-block">{text}</span>{sup}</span>')
    mono = "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;line-height:1.9"
    return f'<div class="prmlab-tokens" style="{mono}">' + "".join(out) + "</div>"


def axes(ax, figsize):
    """``(figure, axes)``: the given axes and its figure, or a new figure of ``figsize``."""
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def line_view_figure(scores: LineScores, ax=None, max_chars: int = 60, title: str | None = None):
    """A matplotlib listing: per line a score box and a label box (coloured, with values) and the code text."""
    from matplotlib.patches import Rectangle

    n = len(scores.lines)
    fig, ax = axes(ax, (8, 0.32 * n + 0.8))
    labels = scores.labels if scores.labels is not None else [None] * n
    for i, (line, s, y) in enumerate(zip(scores.lines, scores.scores, labels)):
        top = n - 1 - i
        for x, v in ((0.0, s), (1.1, y)):
            if v is not None:
                ax.add_patch(Rectangle((x, top), 1.0, 0.9, facecolor=score_rgb(v), edgecolor="#bbbbbb", lw=0.5))
                ax.text(x + 0.5, top + 0.45, f"{v:+.2f}", ha="center", va="center", fontsize=8)
        text = line if len(line) <= max_chars else line[:max_chars - 1] + "…"
        ax.text(2.4, top + 0.45, text.expandtabs(4), ha="left", va="center", family="monospace", fontsize=9)
    ax.text(0.5, n + 0.2, "PRM", ha="center", fontsize=8, color="#555")
    ax.text(1.6, n + 0.2, "label", ha="center", fontsize=8, color="#555")
    ax.set_xlim(-0.1, 2.4 + 0.13 * max_chars)
    ax.set_ylim(-0.2, n + 0.8)
    ax.axis("off")
    ax.set_title(title if title is not None else f"{scores.task_id} {scores.response_id}".strip(), fontsize=9,
                 loc="left")
    return fig


def plot_training_curves(history: Sequence[Mapping[str, Any]], ax=None):
    """Train and validation loss per epoch, and validation AUC on a twin axis."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = axes(ax, (5, 3.2))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    handles = ax.get_lines()
    if any("val_auc" in h for h in history):
        twin = ax.twinx()
        twin.plot(epochs, [h.get("val_auc", float("nan")) for h in history], "^--", color="tab:green",
                  label="validation AUC")
        twin.set_ylabel("AUC")
        twin.set_ylim(0, 1)
        handles = [*handles, *twin.get_lines()]
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    # One legend for both axes, below the plot, so it never hides a curve.
    ax.legend(handles, [h.get_label() for h in handles], loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3,
              fontsize=8, frameon=False)
    return fig


def plot_roc(curves: Mapping[str, tuple[Sequence[float], Sequence[float], float]], ax=None):
    """ROC curves, ``{name: (fpr, tpr, auc)}`` (see :func:`prmlab.prm.metrics.roc_curve`), with the diagonal."""
    fig, ax = axes(ax, (3.8, 3.6))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.2f})")
    ax.plot([0, 1], [0, 1], ":", color="#999")
    ax.set_xlabel("false positive rate (lines after the first error)")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_calibration(curve: Sequence[Mapping[str, float]], ax=None):
    """Mean label against mean score per bin (:func:`prmlab.prm.metrics.calibration_curve`); marker size ~ count."""
    fig, ax = axes(ax, (3.8, 3.6))
    xs = [b["mean_score"] for b in curve]
    ys = [b["mean_label"] for b in curve]
    total = sum(b["count"] for b in curve) or 1
    ax.plot([-1, 1], [-1, 1], ":", color="#999", label="calibrated")
    ax.plot(xs, ys, "-", color="tab:blue", lw=1)
    ax.scatter(xs, ys, s=[20 + 400 * b["count"] / total for b in curve], color="tab:blue", zorder=3, label="PRM")
    ax.set_xlabel("mean PRM score in bin")
    ax.set_ylabel("mean label in bin")
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def plot_selection_comparison(metrics: Mapping[str, Mapping[str, float]], keys: Sequence[str] = ("auc", "accuracy"),
                              baseline_key: str | None = "baseline_auc", ax=None):
    """Grouped bars of test metrics per data selection (``{selection: metrics}``); the baseline as a dashed line."""
    fig, ax = axes(ax, (6, 3.2))
    names = list(metrics)
    width = 0.8 / max(len(keys), 1)
    for j, key in enumerate(keys):
        xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(names))]
        vals = [metrics[n].get(key, float("nan")) for n in names]
        bars = ax.bar(xs, vals, width, label=key)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.2f}", ha="center", fontsize=7)
    if baseline_key:
        base = [metrics[n].get(baseline_key) for n in names if metrics[n].get(baseline_key) is not None]
        if base:
            ax.axhline(sum(base) / len(base), ls="--", color="#777", label="length-only baseline AUC")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1.08)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, frameon=False)
    return fig


# ----------------------------------------------------------------------------------------------------------------
# RL and evaluation


def plot_pass_at_1(rows: Sequence[Any], ax=None):
    """pass@1 per configuration with its interval (``rows``: objects with configuration, pass_at_1, lo, hi)."""
    fig, ax = axes(ax, (6.5, 3.2))
    names = [r.configuration for r in rows]
    ys = [r.pass_at_1 for r in rows]
    err = [[y - r.lo for y, r in zip(ys, rows)], [r.hi - y for y, r in zip(ys, rows)]]
    ax.bar(range(len(rows)), ys, color=COLORS[1.0], alpha=0.75)
    ax.errorbar(range(len(rows)), ys, yerr=err, fmt="none", ecolor="#333", capsize=4)
    for i, y in enumerate(ys):
        ax.text(i, y + 0.01, f"{y:.1%}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("held-out pass@1")
    ax.set_ylim(0, min(1.0, max(r.hi for r in rows) + 0.1) if rows else 1.0)
    return fig


def plot_pass_by_length(rows: Sequence[Any], ax=None):
    """Grouped bars: pass@1 per line bucket (x) and configuration (bars); the long-horizon picture."""
    fig, ax = axes(ax, (6.5, 3.2))
    buckets = list(rows[0].by_lines) if rows else []
    width = 0.8 / max(len(rows), 1)
    for j, r in enumerate(rows):
        xs = [i + (j - (len(rows) - 1) / 2) * width for i in range(len(buckets))]
        ax.bar(xs, [r.by_lines.get(b, float("nan")) for b in buckets], width, label=r.configuration)
    ax.set_xticks(range(len(buckets)), [f"{b} lines" for b in buckets])
    ax.set_ylabel("held-out pass@1")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, frameon=False)
    return fig


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values: a_i = (1/w_i) * sum_{j=i-w_i+1..i} v_j with
    w_i = min(window, i + 1), so the first points average what exists so far (no lag-free centring, no padding)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(window, i + 1))
    return out


def plot_rl_curves(curves: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], key: str = "pass_rate", ax=None,
                   smooth: int = 5):
    """A metric of ``metrics.jsonl`` against the PPO iteration, one line per configuration (mean over its seeds,
    the seeds' range shaded). ``curves``: configuration -> one list of metric rows per seed. With ``smooth`` > 1 the
    line is the trailing :func:`moving_average` over that many iterations (one iteration's 32 rollouts are noisy)
    and the raw per-iteration mean is drawn faintly behind it."""
    fig, ax = axes(ax, (6.5, 3.2))
    for name, runs in curves.items():
        runs = [r for r in runs if r]
        if not runs:
            continue
        n = min(len(r) for r in runs)
        vals = [[float(r[i].get(key, float("nan"))) for i in range(n)] for r in runs]  # (S, n)
        xs = [runs[0][i].get("iteration", i + 1) for i in range(n)]
        mean = [sum(col) / len(col) for col in zip(*vals)]
        label = f"{name} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
        if smooth > 1:
            label += f", mean of last {smooth}"
            (line,) = ax.plot(xs, moving_average(mean, smooth), label=label)
            ax.plot(xs, mean, color=line.get_color(), alpha=0.25, linewidth=0.8)
        else:
            (line,) = ax.plot(xs, mean, label=label)
        if len(runs) > 1:
            lo = [min(c) for c in zip(*vals)]
            hi = [max(c) for c in zip(*vals)]
            if smooth > 1:
                lo, hi = moving_average(lo, smooth), moving_average(hi, smooth)
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("PPO iteration")
    ax.set_ylabel(key.replace("_", " "))
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    return fig


def plot_best_of_k(curves: Mapping[str, Sequence[Mapping[str, float]]], ax=None):
    """Best-of-K pass rate against K, one line per configuration (mean over seeds)."""
    fig, ax = axes(ax, (5, 3.2))
    for name, per_seed in curves.items():
        per_seed = [c for c in per_seed if c]
        if not per_seed:
            continue
        ks = sorted({int(k) for c in per_seed for k in c})
        ax.plot(ks, [sum(c.get(str(k), float("nan")) for c in per_seed) / len(per_seed) for k in ks], label=name)
    ax.set_xlabel("K (samples per task)")
    ax.set_ylabel("pass@K")
    ax.legend(fontsize=7)
    return fig


def save_study_figures(out: Any, rows: Sequence[Any], curves: Mapping[str, Any], best_of_k: Mapping[str, Any],
                       best_of_k_from: str = "") -> list:
    """The study's figures as PNGs in ``out``; returns their paths. ``best_of_k_from`` (which samples the best-of-K
    curves come from) titles that figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pathlib import Path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    made = []
    figures = [("pass_at_1", plot_pass_at_1(rows)), ("pass_by_length", plot_pass_by_length(rows)),
               ("rl_pass_rate", plot_rl_curves(curves, "pass_rate")),
               ("rl_return", plot_rl_curves(curves, "return_total"))]
    if any(c for cs in best_of_k.values() for c in cs):
        fig = plot_best_of_k(best_of_k)
        if best_of_k_from:
            fig.axes[0].set_title(f"held-out best-of-K, mean over seeds; from {best_of_k_from}", fontsize=8)
        figures.append(("best_of_k", fig))
    for name, fig in figures:
        fig.savefig(out / f"{name}.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        made.append(out / f"{name}.png")
    return made
