"""Offline dataset preparation, apart from the runtime loaders: label conversion to train ids
(:mod:`.labels`), COCO json from the official instance annotations (:mod:`.coco_converters`) and
the parallel, atomic, resumable driver both use (:mod:`.conversion`). Used by
``tools/prepare_dg_datasets.py`` and ``tools/convert_to_coco.py``; training never imports it."""
