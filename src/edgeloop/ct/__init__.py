"""The continuous-training loop: monitors, triggers, data validation, trainers, evaluation, compression."""
