"""The index built from a project's pairs, its versions and the searches over it.

- :mod:`~xmodal.index.build` — an atomic snapshot of the pairs -> an :class:`IndexSnapshot`;
- :mod:`~xmodal.index.snapshot` — the index itself: codes of every item, ranking, search;
- :mod:`~xmodal.index.store` — versioned index files, the current pointer, loading;
- :mod:`~xmodal.index.ann` — approximate search above ``ann_threshold`` items;
- :mod:`~xmodal.index.text_search` — word search (BM25) over every text, for the labelling page.
"""
