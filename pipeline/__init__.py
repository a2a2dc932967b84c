"""The runtime around :mod:`mslc`, in two parts that meet only in the shard format.

* :mod:`pipeline.prep`: offline data preparation (raw release → shard directory).
* :mod:`pipeline.training`: the training runtime (shard directory → model, labels, report).
* :mod:`pipeline.review`: what a run found, for people: the review page and the relabel file
  (the labels table and the shards → ``report/``, ``relabel.csv``); the loop calls it at the end.
* Shared by both: :mod:`pipeline.errors`, :mod:`pipeline.storage` (local paths and
  object-store URLs), :mod:`pipeline.shardset` (a shard directory's manifest, label
  table and per-split shards).
* Entry points: ``pipeline/prepare.py``, ``pipeline/train.py``, ``pipeline/report.py``, ``pipeline/fetch_data.py``.
"""
