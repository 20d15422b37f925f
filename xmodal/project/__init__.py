"""One project's state: on disk (:mod:`~xmodal.project.workspace`: items, features, medoids,
settings) and in Redis (:mod:`~xmodal.project.pairs`: the labelled pairs, keyed by annotation id).

- :mod:`~xmodal.project.features` — both modalities embedded into the workspace (feature cache),
  the image words and the class bridge;
- :mod:`~xmodal.project.text_encoder` — the workspace's text encoder, fitted state included;
- :mod:`~xmodal.project.references` — texts an annotator wrote, embedded once;
- :mod:`~xmodal.project.medoids` — the medoids (k-medoids, anytime order) and the cold-start pool.
"""
