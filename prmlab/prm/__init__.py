"""Stage 2, the process reward model: a LoRA adapter plus a scalar head on the policy's backbone (notebook 02).

* :mod:`~prmlab.prm.model`    the PRM: loss, scores at line ends, save/load (adapter ``prm`` + head);
* :mod:`~prmlab.prm.data`     pure data helpers: Table 2 data selection, task splits, line-end examples, batches;
* :mod:`~prmlab.prm.metrics`  pure metrics of line scores against line labels;
* :mod:`~prmlab.prm.stage`    the stage: train (early stopping, validation), ``run_prm``, the drift set.
"""
