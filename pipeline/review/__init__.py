"""Looking at what a run found: a static review page with the suspected label errors as
pictures (:mod:`~pipeline.review.report`), a relabel file for a second round, and the
TensorBoard grid of the top suspected errors.

* :mod:`~pipeline.review.select`: pure functions of the corrected-label table (numbers, galleries, relabel rows).
* :mod:`~pipeline.review.images`: training images by index from only the shards that hold them.
* :mod:`~pipeline.review.charts`, :mod:`~pipeline.review.page`: the PNGs and the HTML.
* Entry point: ``pipeline/report.py RUN_DIR``; the training loop writes both at the end of a run.
"""
