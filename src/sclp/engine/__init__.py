"""Layer 2: pure protocol engines (sans-I/O): segmenters, reassemblers, software TSO.

Time is passed in as ``now`` (seconds, float); nothing here reads a clock.
"""
