"""Layer 3: pure L2 switching (per-VNI forwarding databases, flooding decisions)."""
