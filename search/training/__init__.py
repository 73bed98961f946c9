"""What runs on a worker: data sets as device tensors, batched augmentation, the trainer, and the
trial body (``segment.run_segment``) the driver schedules on Ray; also full training of one
architecture. Nothing here knows about Optuna or the study."""
