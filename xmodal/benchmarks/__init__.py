"""Benchmarks that print their numbers: ``xmodal bench`` (:mod:`~xmodal.benchmarks.speed`),
``xmodal bench load`` (:mod:`~xmodal.benchmarks.load`), ``xmodal simulate``
(:mod:`~xmodal.benchmarks.loop`), the scale and distributed-embedding runs
(:mod:`~xmodal.benchmarks.scale`, :mod:`~xmodal.benchmarks.embed`).
"""
