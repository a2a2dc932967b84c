"""The runtime around :mod:`mslc`, in parts that meet only in two contracts.

* :mod:`pipeline.prep`: offline data preparation (raw release → shard directory).
* :mod:`pipeline.training`: the training runtime (shard directory → model, labels, metrics).
* :mod:`pipeline.review`: what a run found, for people: the review page and the relabel file
  (the run directory and the shards → ``report/``, ``relabel.csv``).
* The contracts: :mod:`pipeline.shardset` (a shard directory: spec, manifest, label table,
  shards and their samples) and :mod:`pipeline.rundir` (a run directory's every file name).
* Shared below them: :mod:`pipeline.errors`, :mod:`pipeline.storage` (local paths and
  object-store URLs), :mod:`pipeline.charts`, :mod:`pipeline.weights`.
* :mod:`pipeline.worker`: one worker of a job, training with the review's outputs.
* Entry points: ``pipeline/prepare.py``, ``pipeline/train.py``, ``pipeline/report.py``, ``pipeline/fetch_data.py``.
"""
