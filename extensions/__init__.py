"""What is not the paper's model, each file beside gam.py's classes rather than inside them, plugged in by
runtime/models.py where a config names it: a memory that the sequence writes (context_memory.py), GAM's memory
read by one fused kernel (fused_read.py), memory-saving training (recompute.py), Mamba's compiled scan
(mamba_scan.py), cached generation (generation.py) and a recorder of what GAM's mixers compute (probe.py). Each
keeps a test against the plain version it stands in for."""
