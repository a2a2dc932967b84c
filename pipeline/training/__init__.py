"""The training runtime: config and presets, the worker state, one object per training
method in one registry, the loop, evaluation, checkpoints, outputs, and the Ray entry.

* :mod:`~pipeline.training.config` (schema, overrides) ← :mod:`~pipeline.training.presets`
  ← :mod:`~pipeline.training.cli` (preset or file, ``key=value``, ``--help``).
* :mod:`~pipeline.training.state`: the worker's data handles, model/optimizer state, meta sampler, normalisation.
* :mod:`~pipeline.training.methods`: :class:`~pipeline.training.methods.Method` and the registry ``METHODS``.
* :mod:`~pipeline.training.streaming`, :mod:`~pipeline.training.transforms`: shards → batches.
* :mod:`~pipeline.training.loop`: epochs and the Ray Train worker entry;
  :mod:`~pipeline.training.evaluate`: accuracies and label metrics.
* :mod:`~pipeline.training.checkpoint`, :mod:`~pipeline.training.outputs`: what a run saves and leaves behind.
* :mod:`~pipeline.training.launch`: the driver's side (name, check data, build the ``TorchTrainer``).
"""
