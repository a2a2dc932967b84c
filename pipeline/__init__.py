"""The runtime around :mod:`mslc`: config, shards, the worker loop, outputs, Ray."""
