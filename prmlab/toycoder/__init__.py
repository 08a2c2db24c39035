"""The toy-coder: the tiny Llama the project trains and ships in ``data/toy-coder`` as the tiny preset's policy.

* :mod:`~prmlab.toycoder.train`     its tokenizer and training (the script ``scripts/train_toy_coder.py`` drives it);
* :mod:`~prmlab.toycoder.evaluate`  pass@1 by length on the eval split through the pipeline's own sampler and
  sandbox, line analysis, and the model card.
"""
