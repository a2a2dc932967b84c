"""One training run: the driver's side (:mod:`.launch`: name, checks, the Ray trainer), the
worker's loop (:mod:`.loop`), evaluation (:mod:`.evaluate`), checkpoints and the mid-epoch
position (:mod:`.checkpoint`, :mod:`.position`), failures across ranks (:mod:`.failures`), and
what a run leaves behind (:mod:`.outputs`; with ``run.crossfit_folds``, the held-out predictions
its flags' estimate reads, :mod:`.crossfit`)."""
