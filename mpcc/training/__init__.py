"""Training on TRL: recipes, per-trainer data, GRPO with prior sampling."""
