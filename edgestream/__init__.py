"""edgestream: event-streaming inference at the edge.

The code lives in the top-level folders ``pipeline/``, ``topics/`` and ``workers/``; this package
exposes them as ``edgestream.pipeline``, ``edgestream.topics`` and ``edgestream.workers`` and holds
the one command line, ``edgestream``. The folders refuse to be imported under their short names
(``import pipeline`` from a checkout), which would make a second copy of every class.
"""

__version__ = "0.1.0"
