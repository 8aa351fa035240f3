"""RL: GRPO loss, trainer/generator mismatch metrics, importance-sampling correction."""
