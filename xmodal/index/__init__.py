"""A project's workspace on disk and the index built from its pairs.

- :mod:`~xmodal.index.workspace` — items, features, medoids and settings of one project on disk;
- :mod:`~xmodal.index.features` — both modalities embedded into the workspace (feature cache);
- :mod:`~xmodal.index.selection` — the medoids (k-medoids, anytime order) and the cold-start pool;
- :mod:`~xmodal.index.pairs` — the pair store in Redis, keyed by annotation id;
- :mod:`~xmodal.index.build` — an atomic snapshot of the pairs -> an :class:`IndexSnapshot`;
- :mod:`~xmodal.index.store` — versioned snapshot files, the current pointer, loading;
- :mod:`~xmodal.index.ann` — approximate search above ``ann_threshold`` items.
"""
