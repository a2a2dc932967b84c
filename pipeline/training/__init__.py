"""The training runtime, in four rooms; each imports only the rooms before it.

* :mod:`~pipeline.training.settings`: the config (schema, overrides), each method's declaration
  and own settings (the registry ``METHODS``, torch-free), the presets, the command line.
* :mod:`~pipeline.training.data`: the epoch's shard assignment, the per-rank stream, transforms,
  GPU JPEG decoding.
* :mod:`~pipeline.training.methods`: the worker's state and one ``Method`` class per ``meta.method``.
* :mod:`~pipeline.training.run`: the run (loop, one epoch, position, evaluation, checkpoints,
  failures, outputs, cross-fitting) and the driver's side (launch).
"""
