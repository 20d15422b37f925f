"""Everything that speaks Label Studio: the API client, project bootstrap, the labelling configs,
task data and options, annotations -> pairs, predictions and their push.

The HTTP client (``httpx``) is imported only by :mod:`~xmodal.labelstudio.client`.
"""
