"""xmodal: image<->text retrieval from a handful of labels (SSM-AL).

The method core (``xmodal.core``) is pure numpy; encoders, data loaders, evaluation and the
Label Studio loop (``backend``, ``workers``) build on it.
"""

__version__ = "0.1.0"
