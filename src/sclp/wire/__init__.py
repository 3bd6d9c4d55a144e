"""Layer 1: pure wire codecs (sans-I/O).  Encode and decode bytes, nothing else."""
