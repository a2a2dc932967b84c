"""The runtime around :mod:`mslc`, in two parts that meet only in the shard format.

* :mod:`pipeline.prep`: offline data preparation (raw release → shard directory).
* :mod:`pipeline.training`: the training runtime (shard directory → model, labels, report).
* Shared by both: :mod:`pipeline.errors`, :mod:`pipeline.storage` (local paths and
  object-store URLs), :mod:`pipeline.shardset` (a shard directory's manifest, label
  table and per-split shards).
* Entry points: ``pipeline/prepare.py``, ``pipeline/train.py``, ``pipeline/fetch_data.py``.
"""
