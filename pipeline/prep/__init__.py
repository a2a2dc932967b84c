"""Offline data preparation: release-format readers → the split/noise plan → the resumable
shard writer and its manifest.

* :mod:`~pipeline.shardset.spec`: what decides a shard directory's contents.
* :mod:`~pipeline.prep.listings`: key/label listings and the :class:`~pipeline.prep.listings.Bad` record.
* :mod:`~pipeline.prep.fashion_mnist`, :mod:`~pipeline.prep.readers`: each release format → items per split.
* :mod:`~pipeline.prep.plan`: meta/validation draw, subsampling, synthetic noise, ``--labels``.
* :mod:`~pipeline.prep.writer`: tar shards, label table, manifest; resumable, parallel, renamed into place.
* :mod:`~pipeline.prep.job`: the whole job (:func:`~pipeline.prep.job.prepare`, :func:`~pipeline.prep.job.ensure_shards`).

Nothing here imports :mod:`pipeline.training`; the two meet in the shard format
(:mod:`pipeline.shardset`).
"""
