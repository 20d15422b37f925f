"""A simulated person labelling through the real services, for ``xmodal demo``, ``xmodal
simulate`` and the tests: :mod:`~xmodal.simulation.annotator` (who answers a task from what its
page shows), :mod:`~xmodal.simulation.pages` (the page: a real Label Studio's, or the backend's
webhook where none runs), :mod:`~xmodal.simulation.loop` (the one labelling loop),
:mod:`~xmodal.simulation.processes` (the backend and worker processes it drives) and
:mod:`~xmodal.simulation.label_studio` (a Label Studio of this machine's own).
"""
