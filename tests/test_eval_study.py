"""The study's aggregation: hand-computed table rows, the per-seed config, the Markdown/CSV table, the figures."""

from __future__ import annotations

import pytest

from prmlab.config import EvalConfig, preset
from prmlab.evaluation.stage import EvalResult
from prmlab.evaluation.study import markdown_table, seed_config, table_rows, task_matrix, write_csv


def result(counts: dict[str, tuple[int, int, int]]) -> EvalResult:
    """An EvalResult from {task: (n, c, n_lines)} (only the fields the study reads matter)."""
    per_task = {t: {"n": n, "c": c, "n_lines": L} for t, (n, c, L) in counts.items()}
    return EvalResult("p", len(counts), 2, 0.2, 0.0, (0.0, 0.0), {}, {}, {}, {}, per_task=per_task,
                      config=EvalConfig().__dict__)


def test_task_matrix_and_rows_by_hand():
    # two tasks: a (2 lines), b (9 lines); two seeds; pass@1 = c / n
    sparse = [result({"a": (2, 1, 2), "b": (2, 0, 9)}), result({"a": (2, 2, 2), "b": (2, 0, 9)})]
    dense = [result({"a": (2, 2, 2), "b": (2, 1, 9)}), result({"a": (2, 2, 2), "b": (2, 1, 9)})]
    assert task_matrix(sparse, ["a", "b"]).tolist() == [[0.5, 0.0], [1.0, 0.0]]
    rows = {r.configuration: r for r in table_rows({"sparse": sparse, "dense": dense}, n_boot=200)}
    assert rows["sparse"].pass_at_1 == pytest.approx((0.5 + 0 + 1 + 0) / 4)
    assert rows["dense"].pass_at_1 == pytest.approx(0.75)
    assert rows["sparse"].by_lines == {"2-3": 0.75, "8-12": 0.0}
    assert rows["dense"].by_lines == {"2-3": 1.0, "8-12": 0.5}
    # d_t = mean over seeds of dense - sparse: a: 1 - 0.75 = 0.25, b: 0.5 - 0 = 0.5 -> mean 0.375
    assert rows["dense"].diff_vs_sparse == pytest.approx(0.375) and rows["sparse"].diff_vs_sparse is None
    assert rows["dense"].p_value == pytest.approx(0.5)  # 2 tasks, both positive: exact sign flip 2/4
    assert rows["dense"].lo <= rows["dense"].pass_at_1 <= rows["dense"].hi


def test_table_outputs(tmp_path):
    rows = table_rows({"sparse": [result({"a": (2, 1, 2)})], "dense": [result({"a": (2, 2, 2)})]}, n_boot=50)
    md = markdown_table(rows)
    assert md.splitlines()[0].startswith("| configuration | seeds | pass@1 [95% CI] | 2-3 lines")
    assert "| dense | 1 | 100.0% [100.0%, 100.0%] | 100.0% | +50.0% [+50.0%, +50.0%], p=1.00 |" in md
    write_csv(rows, tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text().splitlines()[0].startswith("configuration,seeds,pass_at_1")


def test_seed_config_keeps_overrides_and_reseeds():
    cfg = preset("tiny").replace(rl={"iterations": 3}, evaluation={"n_samples": 4})
    s1 = seed_config(cfg, 1)
    assert s1.seed == 1 and s1.labels.seed == 1 and s1.prm.seed == 1 and s1.rl.seed == 1
    assert s1.tasks == cfg.tasks  # the same tasks under every seed (crossed design)
    assert s1.rl.iterations == 3 and s1.evaluation.n_samples == 4
    assert seed_config(cfg, 0) == cfg


def test_study_figures(tmp_path):
    from prmlab.plots import save_study_figures

    rows = table_rows({"sparse": [result({"a": (2, 1, 2)})], "dense": [result({"a": (2, 2, 2)})]}, n_boot=50)
    curves = {"sparse": [[{"iteration": 1, "pass_rate": 0.2, "return_total": 0.1},
                          {"iteration": 2, "pass_rate": 0.3, "return_total": 0.2}]]}
    made = save_study_figures(tmp_path, rows, curves, {"sparse": [{"1": 0.2, "2": 0.3}]})
    assert {p.name for p in made} == {"pass_at_1.png", "pass_by_length.png", "rl_pass_rate.png", "rl_return.png",
                                      "best_of_k.png"}


def test_study_curve_is_pass_at_k_from_the_pass1_samples_by_hand():
    """Tasks a (3 samples, 1 passes) and b (3 samples, none): pass@1 = (1/3 + 0)/2, pass@2 = (1 - C(2,2)/C(3,2))/2
    = (2/3)/2, pass@3 = (1 + 0)/2; an evaluation that drew its own best-of-K samples is used as it is."""
    from prmlab.evaluation.study import curve_source, study_curve

    r = EvalResult("rl/sparse", 2, 3, 0.2, 1 / 6, (0.0, 0.5), {}, {}, {}, {},
                   per_task={"a": {"n": 3, "c": 1}, "b": {"n": 3, "c": 0}})
    curve = study_curve(r)
    assert list(curve) == ["1", "2", "3"]
    assert curve["1"] == pytest.approx(1 / 6) and curve["2"] == pytest.approx(1 / 3) and curve["3"] == pytest.approx(0.5)
    assert curve_source(r) == "the 3 pass@1 samples per task at T=0.2"
    own = EvalResult("rl/sparse", 2, 3, 0.2, 1 / 6, (0.0, 0.5), {}, {}, {}, {}, best_of_k={"1": 0.1, "30": 0.4},
                     config={"bok_temperature": 1.0})
    assert study_curve(own) == {"1": 0.1, "30": 0.4} and curve_source(own) == "best-of-K samples at T=1"
