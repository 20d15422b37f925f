"""One module per ``xmodal`` sub-command, each with ``register(subparsers)``."""
