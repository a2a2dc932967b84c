"""The shard contract: what a shard directory holds and how it is read, the one place data
preparation (which writes shards) and training and the review page (which read them) meet.

* :mod:`~pipeline.shardset.spec`: what decides a shard directory's contents and name
  (:class:`~pipeline.shardset.spec.PrepareOptions`, the ``data.*`` keys preparation reads).
* :mod:`~pipeline.shardset.manifest`: the directory's manifest, label table, per-split shards
  and counts (re-exported here: ``shardset.load_manifest`` …).
* :mod:`~pipeline.shardset.tar`: the tar stream of a shard → raw samples.
* :mod:`~pipeline.shardset.samples`: one raw sample → checked fields, image and label.
"""

from pipeline.shardset.manifest import (
    FORMAT,
    IMAGE_EXTS,
    LABELS_FILE,
    SPLITS,
    check_counts,
    expected_counts,
    load_manifest,
    read_labels_table,
    shard_urls,
    verify,
)

__all__ = [
    "FORMAT",
    "IMAGE_EXTS",
    "LABELS_FILE",
    "SPLITS",
    "check_counts",
    "expected_counts",
    "load_manifest",
    "read_labels_table",
    "shard_urls",
    "verify",
]
