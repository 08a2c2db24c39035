"""prmlab: process-supervised reinforcement learning for code generation.

A small library for the method of "Process Supervision-Guided Policy Optimization for Code Generation"
(Dai et al., 2024): sandboxed unit-test execution, line labels by binary search with best-of-K completions, a
line-level process reward model (PRM), dense reward shaping and LoRA-PPO whose critic can start from the PRM.
"""

__version__ = "0.1.0"
