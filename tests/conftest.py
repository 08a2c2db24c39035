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
