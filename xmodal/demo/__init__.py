"""``xmodal demo``: the whole loop on one machine, with a simulated annotator, to a report.

:mod:`~xmodal.demo.run` drives it; :mod:`~xmodal.demo.processes` starts and stops the services,
:mod:`~xmodal.demo.session` is the simulated annotator, :mod:`~xmodal.demo.label_studio` a Label
Studio of the demo's own, :mod:`~xmodal.demo.baselines` random references and CCA next to SSM-AL,
:mod:`~xmodal.demo.report` the HTML report.
"""
