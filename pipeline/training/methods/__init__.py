"""The training methods: the worker's state they act on (:mod:`.state`: data handles, model,
optimizers, bank) and one :class:`~.registry.Method` subclass per ``meta.method`` in the one
registry (:mod:`.registry`)."""
