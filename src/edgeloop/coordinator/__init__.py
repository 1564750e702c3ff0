"""The cloud side: the coordinator process (fleet registry, ingest, directives, artifacts) and its client."""
from .server import Coordinator

__all__ = ["Coordinator"]
