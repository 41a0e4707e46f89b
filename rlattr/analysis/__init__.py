"""Layer 3: post-hoc analysis of a run: replay ground truth and fidelity, stage effects, plots."""
