"""edgeloop: an edge-to-cloud inference mesh that keeps its models fresh."""

__version__ = "0.1.0"
