"""Training of the SIR-Diff model (``sirdiff-train``): data cache, loop, export."""
