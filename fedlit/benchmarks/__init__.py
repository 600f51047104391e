"""Benchmark evaluation through EleutherAI's lm-evaluation-harness (the optional ``harness`` extra)."""

from fedlit.benchmarks.harness import HarnessConfig, harness_row, harness_scores, run_harness, scores_table

__all__ = ["HarnessConfig", "harness_row", "harness_scores", "run_harness", "scores_table"]
