"""``xmodal demo``: the whole loop on one machine, with a simulated annotator, to a report.

:mod:`~xmodal.demo.run` drives it; :mod:`~xmodal.demo.session` prepares the data and workspace
and measures after every label of :func:`xmodal.simulation.loop.label_loop`;
:mod:`~xmodal.demo.label_studio` is a Label Studio of the demo's own with its project,
:mod:`~xmodal.demo.keep_serving` what ``--keep-serving`` leaves running and ``--stop`` stops,
:mod:`~xmodal.demo.baselines` random references and CCA next to SSM-AL,
:mod:`~xmodal.demo.report` the HTML report.
"""
