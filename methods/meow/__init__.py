"""MEOW: MEMOry-supervised LLM unlearning via inverted facts (arXiv 2409.11844), with TOFU evaluation and baselines."""
