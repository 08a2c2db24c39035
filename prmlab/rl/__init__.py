"""Stage 3, reinforcement learning: LoRA-PPO on the ``policy`` adapter with the PRM's dense line rewards.

* :mod:`~prmlab.rl.shaping`  pure reward shaping: outcome and partial-credit rewards, dense PRM rewards at line ends
  (lambda by pass/fail, 1/T length normalisation, neutral comment lines), the KL penalty (k1, k3), and assembly
  into per-token rewards split into outcome / PRM / KL parts;
* :mod:`~prmlab.rl.ppo`      pure PPO math on masked ``(B, L)`` tensors: GAE, whitening, clipped policy and value
  losses, approximate KL, clip fraction, explained variance, masked means;
* :mod:`~prmlab.rl.loop`     the one readable PPO loop (rollout -> execute -> PRM scores -> shaping -> GAE -> PPO
  epochs -> metrics);
* :mod:`~prmlab.rl.stage`    the stage: variants (sparse, value init, dense, both, partial credit), checkpoints
  and resume.
"""
