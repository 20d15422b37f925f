"""The ``xmodal`` command line: :mod:`~xmodal.cli.main` builds the parser, one module per command."""

from xmodal.cli.main import main

__all__ = ["main"]
