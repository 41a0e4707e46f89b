"""Layer 2: per-record scores: gradient products, targets, the optimiser model, and the
snapshot / TracIn / metagradient scorers."""
