"""Stage 1, line labels: binary search with best-of-K completions (notebook 01, ``prmlab label``).

Same inner shape as every stage package:

* :mod:`~prmlab.labels.search`  pure: the best-of-K oracle state, binary search, labels, categories, Monte-Carlo;
* :mod:`~prmlab.labels.driver`  batched and resumable: many responses' searches in lockstep, cost accounting;
* :mod:`~prmlab.labels.stage`   the stage: sample a run's responses, execute them, label them (``run_labeling``);
* :mod:`~prmlab.labels.stats`   statistics and pictures of a set of labels.
"""
