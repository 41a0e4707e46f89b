"""Layer 3: training: AttributedPPO, IIF, record hooks, presets and the TensorBoard writer.

Imports the record and scoring layers, never analysis."""
