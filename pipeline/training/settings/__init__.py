"""A run's settings: the typed config and its validation (:mod:`.config`), the presets
(:mod:`.presets`), and the command line that reads a preset or file plus ``key=value``
(:mod:`.cli`)."""
