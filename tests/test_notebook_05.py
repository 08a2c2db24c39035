"""Notebook 05 (real models) executed headless on cpu-real's code path at a smoke budget.

At its defaults the notebook computes the whole cpu-real pipeline when runs/cpu-real is missing: about an hour of
one CPU core (docs/real_models.md), too long for the test suite. So this test runs it from scratch in a fresh run
directory with every cpu-real knob kept except the budget (`SET`: 4 training and 2 held-out tasks, 48 new tokens,
K = 2, 2 PPO iterations): the same model (SmolLM2-135M-Instruct in 4 bit), chat track, HumanEval tasks, sandbox
and every stage and picture. tests/test_notebooks.py checks its form (parameters cell, no definitions, stripped) with
the other notebooks and runs those at their defaults.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "05_real_models.ipynb"
SMOKE = ["tasks.n_train=4", "tasks.n_eval=2", "sampling.n_samples=2", "sampling.max_new_tokens=48", "labels.k=2",
         "labels.max_new_tokens=48", "prm.epochs=1", "rl.iterations=2", "rl.checkpoint_every=1",
         "rl.keep_checkpoints=2", "rl.prompts_per_iteration=2", "rl.samples_per_prompt=2", "rl.minibatch_size=2",
         "rl.max_new_tokens=48", "evaluation.n_samples=2", "evaluation.max_new_tokens=48", "evaluation.n_boot=100"]


@pytest.mark.slow
@pytest.mark.smollm2
def test_notebook_05_runs_on_cpu_real_at_a_smoke_budget(tmp_path):
    import papermill

    from prmlab.models import ModelNotAvailable, smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except ModelNotAvailable as e:
        pytest.skip(str(e))
    out_dir = ROOT / "runs" / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(NOTEBOOK), str(out_dir / NOTEBOOK.name),
                               parameters={"RUN_DIR": str(tmp_path / "cpu-real"), "SET": SMOKE},
                               cwd=str(ROOT / "notebooks"), kernel_name="python3", progress_bar=False)
    executed = nbformat.read(out_dir / NOTEBOOK.name, as_version=4)
    for i, cell in enumerate(executed.cells):
        for output in cell.get("outputs", []):
            assert output.output_type != "error", f"cell {i}: {output.get('ename')}"
            if output.output_type == "stream" and output.name == "stderr":
                pytest.fail(f"cell {i} wrote to stderr (a warning?): {output.text[:500]}")
    assert (tmp_path / "cpu-real" / "eval" / "rl-dense+value-init.humaneval.jsonl").exists()
