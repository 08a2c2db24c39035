"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest

from prmlab.testing import tiny_test_model


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """A directory holding a random 2-layer Llama and its tiny tokenizer, loadable by ``ModelConfig(name_or_path=...)``."""
    model, tok = tiny_test_model(seed=1)
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def notebook_runs(tmp_path_factory):
    """One fresh run directory for the session's notebook runs, shared as ``runs/<preset>`` is by default: the
    headless runs of tests/test_notebooks.py fill it from scratch (the slowest case; 03 trains all four RL
    configurations as short runs, since no pipeline RL run is there to reuse), then tests/test_notebooks_browser.py
    copies it into its clone so Run All in the browser reuses what they computed, as after ``prmlab pipeline``."""
    return tmp_path_factory.mktemp("notebook-runs") / "tiny"
