"""Layer 1: what is recorded: records, update plans, the PPO loss, the update loop shared by
training and replay, checkpoints and the run directory."""
