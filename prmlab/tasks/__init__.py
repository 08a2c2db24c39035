"""Task sources: the generated toy world, HumanEval (shipped offline), and hub datasets."""
