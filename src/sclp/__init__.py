"""sclp: the Segment-oriented Connection-less Protocol and a user-space tunnel endpoint."""

__version__ = "0.1.0"
