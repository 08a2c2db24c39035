"""The PRM: pure metrics and data selection by hand, then the model on a tiny random Llama with synthetic labels."""

import json
import math

import pytest
import torch

from prmlab.config import Config, ModelConfig, PRMConfig
from prmlab.prm.data import (Example, collate, completion_text, difficulty, encode, select_data, split_by_task,
                             task_pass_rates)
from prmlab.prm.metrics import (calibration_curve, evaluate, expected_calibration_error, first_error_auc,
                                length_baseline, line_accuracy, mse, roc_auc)
from prmlab.records import LineLabels, LineScores, write_jsonl

# ---------------------------------------------------------------------------------------------- metrics by hand


def test_roc_auc_by_hand():
    # positives 0.9, 0.4; negatives 0.5, 0.1: pairs (0.9>0.5, 0.9>0.1, 0.4<0.5, 0.4>0.1) -> 3/4
    assert roc_auc([0.9, 0.5, 0.4, 0.1], [True, False, True, False]) == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half: pairs (1>0, 0.5=0.5) -> 1.5/2
    assert roc_auc([1.0, 0.5, 0.5], [True, True, False]) == pytest.approx(0.5 * 0.5 + 0.5)
    assert roc_auc([3, 2, 1], [True, True, False]) == 1.0
    assert roc_auc([1, 2, 3], [True, True, False]) == 0.0
    assert math.isnan(roc_auc([1, 2], [True, True]))


def test_first_error_auc_ignores_neutral_lines():
    scores = [0.8, 5.0, 0.2, -0.3, -9.0]
    labels = [1.0, 0.0, 1.0, -1.0, 0.0]
    # positives 0.8, 0.2 vs negative -0.3 -> 1.0; the neutral 5.0 and -9.0 would change it if counted
    assert first_error_auc(scores, labels) == 1.0
    assert first_error_auc([0.1, 0.3], [1.0, -1.0]) == 0.0


def test_line_accuracy_and_mse_by_hand():
    scores = [0.5, -0.2, 0.1, 0.3]
    labels = [1.0, 1.0, 0.0, -1.0]
    assert line_accuracy(scores, labels) == pytest.approx(1 / 3)  # only the first of three non-neutral is right
    assert mse(scores, labels) == pytest.approx((0.25 + 1.44 + 0.01 + 1.69) / 4)
    assert mse(scores, labels, include_neutral=False) == pytest.approx((0.25 + 1.44 + 1.69) / 3)
    assert math.isnan(line_accuracy([0.3], [0.0]))
    with pytest.raises(ValueError):
        mse([1.0], [1.0, 2.0])


def test_calibration_curve_by_hand():
    scores = [-0.9, -0.8, 0.1, 0.9, 0.95, 2.0, 0.3]
    labels = [-1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    curve = calibration_curve(scores, labels, n_bins=2)  # bins [-1, 0) and [0, 1]; 2.0 clips into the top bin
    assert [b["count"] for b in curve] == [2, 4]
    low, high = curve
    assert low["mean_score"] == pytest.approx(-0.85) and low["mean_label"] == 0.0 and low["frac_positive"] == 0.5
    assert high["mean_score"] == pytest.approx((0.1 + 0.9 + 0.95 + 2.0) / 4) and high["frac_positive"] == 1.0
    ece = expected_calibration_error(curve)
    assert ece == pytest.approx((2 * 0.85 + 4 * abs(1 - 3.95 / 4)) / 6)


def test_length_baseline_and_evaluate():
    assert length_baseline(4) == [-0.25, -0.5, -0.75, -1.0]
    recs = [LineScores("t", "a", ("x", "y"), (0.9, -0.9), (1.0, -1.0)),
            LineScores("t", "b", ("x", "y", "z"), (0.5, 0.4, -0.5), (1.0, 1.0, -1.0))]
    m = evaluate(recs)
    assert m["auc"] == 1.0 and m["accuracy"] == 1.0 and m["n_lines"] == 5 and m["n_responses"] == 2
    # baseline scores: a: -0.5, -1; b: -1/3, -2/3, -1. positives -0.5, -1/3, -2/3 vs negatives -1, -1 -> all above
    assert m["baseline_auc"] == 1.0
    with pytest.raises(ValueError):
        evaluate([LineScores("t", "c", ("x",), (0.1,))])


# ------------------------------------------------------------------------------------------ data selection by hand


def _lab(task, rid, category, labels=(1.0,), lines=None):
    lines = lines or tuple(f"    x{i} = {i}" for i in range(len(labels)))
    return LineLabels("def f():\n", tuple(lines), tuple(labels), task, rid, category)


def _selection_set():
    # task A: 2/2 pass (easy); B: 1/2 (medium); C: 0/2 (hard)
    return [_lab("A", "a0", "correct"), _lab("A", "a1", "correct"),
            _lab("B", "b0", "correct"), _lab("B", "b1", "revised", (1.0, -1.0)),
            _lab("C", "c0", "revised", (1.0, -1.0)), _lab("C", "c1", "wrong", (-1.0,))]


def test_pass_rates_and_difficulty():
    assert task_pass_rates(_selection_set()) == {"A": 1.0, "B": 0.5, "C": 0.0}
    assert [difficulty(r, 0.2, 0.8) for r in (0.0, 0.2, 0.5, 0.8, 0.81)] == ["hard", "medium", "medium", "medium", "easy"]


@pytest.mark.parametrize("selection, expected", [
    ("full", ["a0", "a1", "b0", "b1", "c0", "c1"]),
    ("remove-hard", ["a0", "a1", "b0", "b1"]),
    ("medium-only", ["b0", "b1"]),
    ("revised-only", ["b1", "c0"]),
])
def test_select_data(selection, expected):
    got = select_data(_selection_set(), selection, hard_below=0.2, easy_above=0.8)
    assert [r.response_id for r in got] == expected


def test_select_data_uses_given_pass_rates():
    rates = {"A": 0.5, "B": 0.1, "C": 0.5}  # e.g. from an executions file, not the labels
    assert [r.response_id for r in select_data(_selection_set(), "medium-only", rates)] == ["a0", "a1", "c0", "c1"]
    with pytest.raises(ValueError):
        select_data(_selection_set(), "everything")


def test_split_by_task_is_disjoint_complete_and_seeded():
    labels = [_lab(f"T{t}", f"T{t}/{i}", "wrong", (-1.0,)) for t in range(10) for i in range(3)]
    val, test, train = split_by_task(labels, (0.2, 0.3), seed=1)
    tasks = [{r.task_id for r in part} for part in (val, test, train)]
    assert [len(t) for t in tasks] == [2, 3, 5]
    assert not (tasks[0] & tasks[1]) and not (tasks[0] & tasks[2]) and not (tasks[1] & tasks[2])
    assert len(val) + len(test) + len(train) == len(labels)
    again = split_by_task(labels, (0.2, 0.3), seed=1)
    assert [r.response_id for r in again[0]] == [r.response_id for r in val]
    other = split_by_task(labels, (0.2, 0.3), seed=2)
    assert {r.task_id for r in other[1]} != tasks[1] or {r.task_id for r in other[0]} != tasks[0]


def test_encode_positions_are_line_ends_on_real_tokens(tiny):
    _, tok = tiny
    rec = _lab("t", "r", "revised", (1.0, 0.0, -1.0), ("    c = a + b", "    # note", "    return c"))
    ex = encode(tok, rec)
    text = rec.prompt + completion_text(rec.completions)
    assert completion_text(rec.completions) == "    c = a + b\n    # note\n    return c\n"
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert list(ex.input_ids) == enc.input_ids
    ends = [len(rec.prompt) + len("    c = a + b") - 1, text.index("note") + 3, text.index("return c") + 7]
    for pos, c in zip(ex.positions, ends):
        start, end = enc.offset_mapping[pos]
        assert start <= c < end  # the token at the position holds the line's last character
    assert ex.labels == (1.0, 0.0, -1.0)


def test_collate_pads_on_the_right():
    a = Example((5, 6, 7), (1, 2), (1.0, -1.0))
    b = Example((8,), (0,), (0.0,))
    batch = collate([a, b], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch.positions.tolist() == [[1, 2], [0, 0]]
    assert batch.line_mask.tolist() == [[1, 1], [1, 0]]
    assert batch.targets.tolist() == [[1.0, -1.0], [0.0, 0.0]]


# ------------------------------------------------------------------------------------------------- loss by hand


def test_prm_loss_by_hand():
    from prmlab.prm.model import prm_loss, raw_to_score

    raw = torch.tensor([[0.5, 0.0, 2.0]])
    y = torch.tensor([[1.0, 0.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third line is padding
    assert float(prm_loss(raw, y, mask, "mse")) == pytest.approx((0.25 + 0.0) / 2)
    assert float(prm_loss(raw, y, mask, "mse", include_neutral=False)) == pytest.approx(0.25)
    bce = -(math.log(1 / (1 + math.exp(-0.5))) + math.log(0.5)) / 2  # targets 1 and 0.5 at logit 0 -> log 2
    assert float(prm_loss(raw, y, mask, "bce")) == pytest.approx(bce, rel=1e-5)
    assert raw_to_score(torch.tensor([0.0]), "bce").item() == 0.0
    assert raw_to_score(torch.tensor([3.0]), "mse").item() == 3.0
    with pytest.raises(ValueError):
        prm_loss(raw, y, mask, "hinge")


# ----------------------------------------------------------------------------------- the model on a tiny Llama

PROGRAMS = [
    ("def f(a, b):\n", "    c = a + b\n    d = c * 2\n    return d - a\n"),
    ("def g(x):\n", "    # double it\n    y = x * 2\n\n    return y\n"),
    ("x = [1, 2, 3]\n", "print(sum(x))"),
    ("def h(n, m):\n", "    k = n - m\n    pass\n    return k // 3\n"),
]


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    from prmlab.testing import tiny_test_model

    return tiny_test_model(seed=0)


def _fresh(tiny, names=("prm",), loss="mse", perturb=True):
    """A PRM on a fresh copy of the tiny model; ``perturb`` makes adapter and head non-trivial."""
    from prmlab.prm.model import new_prm
    from prmlab.testing import tiny_model

    model = tiny_model(tiny[1], seed=0)
    if len(names) > 1:
        from prmlab.models import add_adapters

        model = add_adapters(model, ModelConfig(), names=names)
    prm = new_prm(ModelConfig(), loss=loss, model=model, tokenizer=tiny[1])
    if perturb:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for n, p in prm.model.named_parameters():
                if "lora_B" in n:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
            prm.head.linear.weight.copy_(torch.randn(prm.head.linear.weight.shape, generator=g))
    return prm


def test_batched_scores_equal_one_at_a_time(tiny):
    prm = _fresh(tiny)
    batched = prm.score(PROGRAMS, batch_size=4)
    for program, b in zip(PROGRAMS, batched):
        (alone,) = prm.score([program], batch_size=1)
        assert alone.lines == b.lines and len(b.scores) == len(b.lines) > 0
        assert max(abs(x - y) for x, y in zip(alone.scores, b.scores)) < 1e-5
    assert len({round(s, 4) for r in batched for s in r.scores}) > 3, "scores must not be constant"
    assert batched[1].lines == ("    # double it", "    y = x * 2", "", "    return y")


def _synthetic(n_tasks=12, per_task=3, seed=0):
    """Responses whose labels flip from +1 to -1 at the line holding the marker ``bad``; comments are 0."""
    import random

    rng = random.Random(seed)
    out = []
    for t in range(n_tasks):
        for i in range(per_task):
            T = rng.randint(2, 5)
            cut = rng.randint(0, T)  # lines >= cut are after the error
            lines, labels = [], []
            for m in range(T):
                if rng.random() < 0.15:
                    lines.append("    # note")
                    labels.append(0.0)
                    continue
                bad = m == cut
                lines.append(f"    v{m} = bad(v{m})" if bad else f"    v{m} = a + {m}")
                labels.append(-1.0 if m >= cut else 1.0)
            category = "correct" if cut == T else ("revised" if cut > 0 else "wrong")
            out.append(LineLabels(f"def f{t}(a):\n", tuple(lines), tuple(labels), f"task{t}", f"task{t}/{i}",
                                  category))
    return out


def test_training_on_a_memorisable_batch_drives_the_loss_near_zero(tiny):
    from prmlab.prm.stage import train_step

    prm = _fresh(tiny, perturb=False)
    cfg = PRMConfig(lr=1e-2)
    examples = [prm.encode(r) for r in _synthetic(n_tasks=2, per_task=2)]
    opt = torch.optim.AdamW(prm.trainable(), lr=cfg.lr)
    losses = [train_step(prm, opt, examples, cfg) for _ in range(150)]
    assert losses[0] > 0.3
    assert losses[-1] < 0.01, losses[-10:]


def test_a_training_step_changes_only_the_prm_adapter_and_head(tiny):
    from prmlab.prm.stage import train_step

    prm = _fresh(tiny, names=("policy", "prm", "critic"))
    prm.model.set_adapter("policy")
    before = {n: p.detach().clone() for n, p in prm.model.named_parameters()}
    head_before = prm.head.linear.weight.detach().clone()
    opt = torch.optim.AdamW(prm.trainable(), lr=1e-2)
    train_step(prm, opt, [prm.encode(r) for r in _synthetic(2, 2)], PRMConfig())
    changed = {n for n, p in prm.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "the step changed nothing"
    assert all(".prm." in n and "lora_" in n for n in changed), sorted(changed)[:5]
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    assert not torch.equal(prm.head.linear.weight, head_before)
    assert prm.model.active_adapter == "policy", "the previously active adapter is restored"


def test_save_load_round_trip_gives_identical_scores(tiny, tmp_path):
    from prmlab.prm.model import load_prm, save_prm
    from prmlab.testing import tiny_model

    prm = _fresh(tiny, loss="bce")
    save_prm(prm, tmp_path, {"note": "test"})
    assert (tmp_path / "prm" / "adapter_model.safetensors").exists() and (tmp_path / "head.safetensors").exists()
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["loss"] == "bce" and meta["adapter"] == "prm" and meta["note"] == "test"
    loaded = load_prm(tmp_path, model=tiny_model(tiny[1], seed=0), tokenizer=tiny[1])
    assert loaded.loss == "bce"
    a, b = prm.score(PROGRAMS), loaded.score(PROGRAMS)
    assert [r.scores for r in a] == [r.scores for r in b]
    assert all(-1 <= s <= 1 for r in b for s in r.scores), "BCE scores live on the label scale"
    fresh = _fresh(tiny, perturb=False).score(PROGRAMS)
    assert [r.scores for r in fresh] != [r.scores for r in b], "loading must change a fresh PRM"


def test_train_prm_end_to_end_on_synthetic_labels(tiny, tmp_path):
    from prmlab.prm.model import load_prm
    from prmlab.prm.stage import train_prm
    from prmlab.testing import tiny_model

    labels = _synthetic(n_tasks=20, per_task=3)
    cfg = PRMConfig(lr=5e-3, epochs=6, batch_size=8, patience=2, val_fraction=0.2, test_fraction=0.2)
    result = train_prm(labels, cfg, ModelConfig(), tmp_path, model=tiny_model(tiny[1], seed=0), tokenizer=tiny[1],
                       progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, result.epochs_run + 1))
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert result.n_val > 0 and result.n_test > 0 and result.n_train + result.n_val + result.n_test == len(labels)
    assert result.best_val_loss == min(r["val_loss"] for r in rows)
    assert result.test_metrics["auc"] > 0.9, result.test_metrics  # the marker is easy to spot
    assert result.test_metrics["auc"] > result.test_metrics["baseline_auc"]
    loaded = load_prm(tmp_path, model=tiny_model(tiny[1], seed=0), tokenizer=tiny[1])
    a, b = loaded.score_labels(labels[:6]), result.prm.score_labels(labels[:6])
    assert [r.scores for r in a] == [r.scores for r in b], "the checkpoint holds the best epoch's weights"
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["best_epoch"] == result.best_epoch


def test_train_prm_refuses_empty_selection(tiny, tmp_path):
    from prmlab.prm.stage import train_prm
    from prmlab.testing import tiny_model

    labels = [r for r in _synthetic(6, 2) if r.category != "revised"]
    with pytest.raises(ValueError, match="revised-only"):
        train_prm(labels, PRMConfig(data_selection="revised-only"), ModelConfig(), tmp_path,
                  model=tiny_model(tiny[1]), tokenizer=tiny[1], progress=False)


def test_run_prm_needs_labels(tmp_path):
    from prmlab.prm.stage import run_prm

    with pytest.raises(FileNotFoundError, match="prmlab label"):
        run_prm(Config(), tmp_path)


def test_run_prm_trains_and_evaluates_drift(tiny, tmp_path, monkeypatch):
    from prmlab.prm.stage import run_prm
    from prmlab.testing import tiny_model

    write_jsonl(tmp_path / "labels.jsonl", _synthetic(8, 2))
    write_jsonl(tmp_path / "drift.jsonl", _synthetic(3, 2, seed=5))
    cfg = Config().replace(prm={"epochs": 1, "batch_size": 8, "drift_labels": "drift.jsonl"})
    result = run_prm(cfg, tmp_path, model=tiny_model(tiny[1], seed=0), tokenizer=tiny[1], progress=False)
    assert result.epochs_run == 1 and (tmp_path / "prm" / "head.safetensors").exists()
    drift = json.loads((tmp_path / "prm" / "drift_metrics.json").read_text())
    assert drift["n_responses"] == 6


def test_training_again_on_the_same_model_starts_from_the_base(tiny, tmp_path):
    from prmlab.prm.model import new_prm

    prm = _fresh(tiny)  # adapter weights perturbed, as after a training run
    again = new_prm(ModelConfig(), model=prm.model, tokenizer=tiny[1])
    assert all(float(p.detach().abs().sum()) == 0 for n, p in again.model.named_parameters() if "lora_B.prm" in n)
    assert all(s == 0 for r in again.score(PROGRAMS) for s in r.scores), "fresh adapter and zero head predict 0"


def _drift_cfg():
    from prmlab.config import preset

    return preset("tiny").replace(tasks={"n_train": 3, "n_eval": 2, "max_lines": 3},
                                  sampling={"n_samples": 2, "max_new_tokens": 12, "batch_size": 8},
                                  labels={"k": 2, "chunk": 1, "max_new_tokens": 12, "group_size": 4})


def test_label_drift_set_labels_held_out_tasks_with_the_temperature_proxy(tiny, tmp_path):
    from prmlab.prm.stage import label_drift_set
    from prmlab.tasks import load_tasks
    from prmlab.records import read_jsonl

    cfg = _drift_cfg()
    with pytest.raises(PermissionError):
        label_drift_set(cfg, tmp_path, n_tasks=2, temperature=0.5)
    recs = label_drift_set(cfg, tmp_path, n_tasks=2, temperature=0.5, allow_execution=True, model=tiny[0],
                           tokenizer=tiny[1], progress=False)
    eval_ids = {t.task_id for t in load_tasks(cfg.tasks, "eval")}
    assert len(recs) == 4 and {r.task_id for r in recs} <= eval_ids
    assert {r.policy for r in recs} == {"base@T0.5"}
    assert [r.response_id for r in read_jsonl(tmp_path / "labels_drift.jsonl", LineLabels)] == \
        [r.response_id for r in recs]
    assert json.loads((tmp_path / "drift" / "base@T0.5" / "config.json").read_text())["sampling"]["temperature"] == 0.5


def _scores(task, scores, labels, category="revised"):
    return LineScores(task, f"{task}/{len(scores)}", tuple("x" for _ in scores), tuple(scores), tuple(labels),
                      meta={"category": category})


def test_task_bootstrap_difference_by_hand():
    from prmlab.prm.metrics import line_accuracy
    from prmlab.prm.stage import task_bootstrap_difference

    # task a: base gets 1 of 2 lines right, drifted 2 of 2; task b: base 2 of 2, drifted 0 of 2
    base = [_scores("a", [0.5, -0.5], [1, 1]), _scores("b", [0.5, -0.5], [1, -1])]
    drifted = [_scores("a", [0.5, 0.5], [1, 1]), _scores("b", [-0.5, 0.5], [1, -1])]
    d, lo, hi = task_bootstrap_difference(base, drifted, line_accuracy, n_boot=200, seed=0)
    assert d == pytest.approx(2 / 4 - 3 / 4)  # pooled lines: drifted 2 of 4, base 3 of 4
    # every resample is {a, a}, {b, b} or {a, b}: differences +0.5, -1.0, -0.25
    assert lo == pytest.approx(-1.0) and hi == pytest.approx(0.5)
    same = task_bootstrap_difference(base, base, line_accuracy, n_boot=50, seed=0)
    assert same == (0.0, 0.0, 0.0)


def test_drift_policy_prefers_the_sparse_runs_last_kept_checkpoint(tmp_path):
    from prmlab.prm.stage import drift_policy

    def ckpt(variant, name):
        path = tmp_path / "rl" / variant / "checkpoints" / name / "policy"
        path.mkdir(parents=True)
        (path / "adapter_model.safetensors").write_bytes(b"")

    proxy = drift_policy(tmp_path, temperature=0.7)
    assert proxy.is_proxy and proxy.name == "base@T0.7" and proxy.checkpoint is None
    ckpt("dense", "last")
    assert drift_policy(tmp_path).name == "rl/dense" and not drift_policy(tmp_path).is_proxy
    ckpt("sparse", "last")
    assert drift_policy(tmp_path).name == "rl/sparse"
    ckpt("sparse", "rl-100")
    got = drift_policy(tmp_path)
    assert got.name == "rl/sparse/rl-100" and got.checkpoint == tmp_path / "rl" / "sparse" / "checkpoints" / "rl-100"
    assert got.slug == "rl-sparse-rl-100"


def test_measure_drift_labels_an_rl_checkpoint_and_the_base_on_the_same_held_out_tasks(tiny, tmp_path):
    """The real-checkpoint path: the policy adapter loaded from rl/sparse/rl-100, labelled like the training data."""
    from prmlab.models import ROLES, add_adapters
    from prmlab.prm.model import new_prm
    from prmlab.prm.stage import measure_drift
    from prmlab.records import read_jsonl
    from prmlab.tasks import load_tasks
    from prmlab.testing import tiny_model

    cfg = _drift_cfg()
    prm = new_prm(cfg.model, model=tiny_model(tiny[1], seed=0), tokenizer=tiny[1])
    peft = add_adapters(prm.model, cfg.model, ROLES)
    with torch.no_grad():  # a "trained" policy, saved as the sparse run's last kept checkpoint, then forgotten
        for name, p in peft.named_parameters():
            if "lora_B.policy" in name:
                p.add_(torch.randn_like(p) * 0.5)
        peft.save_pretrained(tmp_path / "rl" / "sparse" / "checkpoints" / "rl-100", selected_adapters=["policy"])
        for name, p in peft.named_parameters():
            if "lora_B.policy" in name:
                p.zero_()
    with pytest.raises(PermissionError):
        measure_drift(cfg, tmp_path, prm, n_tasks=2)
    result = measure_drift(cfg, tmp_path, prm, n_tasks=2, allow_execution=True, progress=False, n_boot=50)
    assert result.policy == "rl/sparse/rl-100" and not result.proxy and result.n_tasks == 2
    eval_ids = [t.task_id for t in load_tasks(cfg.tasks, "eval")]
    base = read_jsonl(tmp_path / "drift" / "base" / "labels.jsonl", LineLabels)
    rl = read_jsonl(tmp_path / "drift" / "rl-sparse-rl-100" / "labels.jsonl", LineLabels)
    assert {r.task_id for r in base} == {r.task_id for r in rl} == set(eval_ids[:2])
    assert len(base) == len(rl) == 4 and {r.policy for r in rl} == {"rl/sparse/rl-100"}
    assert [r.completions for r in rl] != [r.completions for r in base], "the checkpoint's weights were sampled"
    assert result.base["n_responses"] == result.drifted["n_responses"] == 4
    saved = json.loads((tmp_path / "drift" / "result.json").read_text())
    assert saved["policy"] == "rl/sparse/rl-100"
    assert set(saved["difference"]) == {"accuracy", "auc", "accuracy_failing", "accuracy_passing"}
    assert "RL checkpoint" in str(result) and "PROXY" not in str(result)


def test_train_result_prints_one_line_summary():
    from prmlab.prm.stage import PRMTrainResult

    r = PRMTrainResult("runs/x/prm", 2, 4, 0.19, {}, {"auc": 0.95, "baseline_auc": 0.47, "accuracy": 0.93, "mse": 0.18},
                       720, 240, 240, "revised-only")
    text = str(r)
    assert "720 responses (revised-only)" in text and "AUC 0.950 (length-only 0.470)" in text
    assert "best epoch 2 of 4" in text and text.endswith("-> runs/x/prm")


def test_prm_on_a_4bit_base_trains_scores_and_round_trips(tiny, tmp_path):
    """The QLoRA path (cpu-real, gpu presets): bitsandbytes 4-bit base, prm adapter + head in fp32."""
    import dataclasses

    pytest.importorskip("bitsandbytes")
    from prmlab.models import load_base_model
    from prmlab.prm.model import load_prm, new_prm, save_prm
    from prmlab.prm.stage import train_step

    model, tok = tiny
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    mc = ModelConfig(name_or_path=str(tmp_path / "base"), load_in_4bit=True)
    prm = new_prm(mc, model=load_base_model(mc), tokenizer=tok)
    assert type(prm.model.get_base_model().model.layers[0].mlp.up_proj.base_layer).__name__ == "Linear4bit"
    examples = [prm.encode(r) for r in _synthetic(2, 2)]
    opt = torch.optim.AdamW(prm.trainable(), lr=1e-2)
    losses = [train_step(prm, opt, examples, PRMConfig()) for _ in range(10)]
    assert losses[-1] < losses[0] / 2
    batched = prm.score(PROGRAMS, batch_size=4)
    alone = [prm.score([p], batch_size=1)[0] for p in PROGRAMS]
    assert all(abs(a - b) < 1e-5 for x, y in zip(batched, alone) for a, b in zip(x.scores, y.scores))
    save_prm(prm, tmp_path / "ckpt", {"model": dataclasses.asdict(mc)})
    loaded = load_prm(tmp_path / "ckpt", tokenizer=tok)  # base re-loaded in 4 bit from the saved ModelConfig
    assert [r.scores for r in loaded.score(PROGRAMS)] == [r.scores for r in batched]
