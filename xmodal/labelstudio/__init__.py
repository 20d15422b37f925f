"""Everything that speaks Label Studio: the API client, project bootstrap, the labelling configs,
task data and options, annotations -> pairs, predictions and their push.

Heavy imports (``label_studio_sdk``) live only in :mod:`~xmodal.labelstudio.client`.
"""
