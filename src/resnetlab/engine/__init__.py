"""Training: the run top to bottom (trainer), the epoch loop, optimisers, schedules, metrics, checkpoints,
distribution across processes, distillation and the run's logbook."""
