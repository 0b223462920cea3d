"""edgestream: event-streaming inference at the edge.

The code lives in the top-level folders ``pipeline/``, ``topics/`` and ``workers/``; this package
exposes them as ``edgestream.pipeline``, ``edgestream.topics`` and ``edgestream.workers`` and holds
the one command line, ``edgestream``.
"""

__version__ = "0.1.0"
