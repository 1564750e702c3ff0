"""The continuous-training loop's library: monitors, detectors, triggers, data validation, trainers,
evaluation and compression.  Pure pieces over NumPy arrays and dataclasses; the coordinator wires
them to its store and services.  Import the modules themselves (nothing is re-exported here).
"""
