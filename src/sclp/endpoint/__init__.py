"""Layer 5: the endpoint (NVE) that wires codecs, engines, switching and I/O together."""
