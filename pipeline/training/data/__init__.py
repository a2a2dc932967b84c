"""The data path of a worker: which shards each rank reads in an epoch (:mod:`.assign`), the
per-rank stream of decoded batches (:mod:`.streaming`), image transforms (:mod:`.transforms`),
and JPEG decoding on the GPU (:mod:`.device_decode`)."""
