"""Per-line views (HTML and matplotlib) and the PRM's curves."""

import html.parser

import matplotlib
import pytest

matplotlib.use("Agg")

from prmlab.plots import (line_view_figure, line_view_html, line_views_html, plot_calibration, plot_roc,  # noqa: E402
                          plot_selection_comparison, plot_training_curves, score_hex, score_rgb)
from prmlab.prm.metrics import calibration_curve, roc_auc, roc_curve  # noqa: E402
from prmlab.records import LineScores  # noqa: E402

REC = LineScores("toy-3-abc", "toy-3-abc/base/0/1", ("    d = a < b", "    # why <not>", "    return d & 1"),
                 (0.8, 0.05, -0.7), (1.0, 0.0, -1.0))


def test_score_colours_run_red_white_green():
    assert score_rgb(0.0) == (1.0, 1.0, 1.0)
    assert score_hex(1.0) == "#1a994f" and score_hex(-1.0) == "#d6302" + "6"
    assert score_rgb(5.0) == score_rgb(1.0) and score_rgb(-3.0) == score_rgb(-1.0)  # clipped
    r, g, b = score_rgb(0.5)
    assert r < 1 and g < 1 and b < 1 and g > r  # halfway to green
    assert score_rgb(float("nan")) == (0.85, 0.85, 0.85)
    assert score_rgb(0.5, low=0.0, high=1.0) == (1.0, 1.0, 1.0)  # midpoint of a [0, 1] scale


class _Cells(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "tr":
            self.rows.append([])
        if tag == "td":
            self.rows[-1].append("")

    def handle_data(self, data):
        if self.rows and self.rows[-1] and self.tags and self.tags[-1] == "td":
            self.rows[-1][-1] += data


def test_line_view_html_lists_every_line_escaped_with_score_and_label():
    page = line_view_html(REC)
    assert "<script" not in page and "&lt;not&gt;" in page and "d &amp; 1" in page
    parser = _Cells()
    parser.feed(page)
    body = [r for r in parser.rows if r]
    assert [r[3] for r in body] == list(REC.lines)
    assert [r[1] for r in body] == ["+0.80", "+0.05", "-0.70"]
    assert [r[2] for r in body] == ["+1.00", "+0.00", "-1.00"]
    assert score_hex(0.8) in page and score_hex(-0.7) in page


def test_line_view_html_without_labels_and_with_prompt():
    rec = LineScores("", "7", ("x = 1",), (0.3,))
    page = line_view_html(rec, title="a <title>", prompt="def f():\n    '''doc'''")
    assert "a &lt;title&gt;" in page and "def f():" in page and "-</td>" in page
    both = line_views_html([REC, rec], ["Correct", "Wrong"])
    assert both.count("<table") == 2 and "Correct" in both


def test_line_view_figure_draws_one_row_per_line():
    fig = line_view_figure(REC)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert all(line.expandtabs(4) in texts for line in REC.lines)
    assert "+0.80" in texts and "-1.00" in texts
    assert len(ax.patches) == 2 * len(REC.lines)
    long = LineScores("t", "r", ("y" * 100,), (0.0,))
    assert any(t.get_text().endswith("…") for t in line_view_figure(long, max_chars=20).axes[0].texts)


def test_roc_curve_matches_auc():
    scores = [0.9, 0.5, 0.5, 0.4, 0.1, 0.1]
    pos = [True, False, True, True, False, False]
    fpr, tpr = roc_curve(scores, pos)
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0
    area = sum((fpr[i + 1] - fpr[i]) * (tpr[i + 1] + tpr[i]) / 2 for i in range(len(fpr) - 1))
    assert area == pytest.approx(roc_auc(scores, pos))
    assert len(fpr) == 5  # thresholds 0.9, 0.5 (tie), 0.4, 0.1 (tie) plus the origin


def test_curves_draw():
    history = [{"epoch": 1, "train_loss": 0.5, "val_loss": 0.6, "val_auc": 0.7},
               {"epoch": 2, "train_loss": 0.3, "val_loss": 0.5, "val_auc": 0.8}]
    fig = plot_training_curves(history)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 2
    fig = plot_roc({"PRM": ([0, 0.5, 1], [0, 1, 1], 0.75)})
    assert "PRM (AUC 0.75)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    fig = plot_calibration(calibration_curve([0.9, -0.9, 0.2], [1.0, -1.0, -1.0], n_bins=4))
    assert len(fig.axes[0].collections[0].get_offsets()) == 3
    fig = plot_selection_comparison({"full": {"auc": 0.8, "accuracy": 0.9, "baseline_auc": 0.5},
                                     "revised-only": {"auc": 0.85, "accuracy": 0.7, "baseline_auc": 0.5}})
    assert len(fig.axes[0].patches) == 4


def test_token_view_marks_the_line_end_tokens():
    from prmlab.plots import token_view_html

    pieces = ["def", " f", "():", "\n   ", " x", " =", " 1", "\n"]
    page = token_view_html(pieces, positions=[3, 7], labels=[1.0, -1.0], n_prompt=3)
    assert page.count("<sup") == 2 and ">1</sup>" in page and ">2</sup>" in page
    assert score_hex(1.0) in page and score_hex(-1.0) in page
    assert page.count("↵") == 2 and page.count("color:#aaa") == 3
    shared = token_view_html(pieces, positions=[7, 7])
    assert ">1,2</sup>" in shared  # two lines read at one token


def test_moving_average_by_hand():
    from prmlab.plots import moving_average

    assert moving_average([1.0, 3.0, 2.0, 6.0], 2) == [1.0, 2.0, 2.5, 4.0]
    assert moving_average([1.0, 3.0, 2.0, 6.0], 3) == [1.0, 2.0, 2.0, pytest.approx(11 / 3)]
    assert moving_average([4.0, 0.0], 1) == [4.0, 0.0] and moving_average([], 5) == []
    with pytest.raises(ValueError):
        moving_average([1.0], 0)


def test_rl_curves_draw_the_smoothed_mean_over_the_faint_raw_one():
    from prmlab.plots import plot_rl_curves

    rows = [{"iteration": i + 1, "pass_rate": v} for i, v in enumerate([0.0, 1.0, 0.0, 1.0])]
    fig = plot_rl_curves({"sparse": [rows]}, smooth=2)
    smoothed, raw = fig.axes[0].lines
    assert list(smoothed.get_ydata()) == [0.0, 0.5, 0.5, 0.5] and list(raw.get_ydata()) == [0.0, 1.0, 0.0, 1.0]
    assert "mean of last 2" in fig.axes[0].get_legend().get_texts()[0].get_text()
    assert len(plot_rl_curves({"sparse": [rows]}, smooth=1).axes[0].lines) == 1
