"""One training run: the driver's side (:mod:`.launch`: name, checks, the Ray trainer), the
worker's loop (:mod:`.loop`), evaluation (:mod:`.evaluate`), checkpoints and the mid-epoch
position (:mod:`.checkpoint`, :mod:`.position`), failures across ranks (:mod:`.failures`), and
what a run leaves behind (:mod:`.outputs`)."""
