"""The one base of every error that reaches a user as one line.

``python -m bench`` prints a :class:`CertbenchError` as ``error: MESSAGE`` on stderr and
exits with code 1, with no traceback and (the commands check their arguments first)
nothing written. Each layer raises its own subclass (a model file, a records file, an
option, a VNN-LIB file, ...); the subclasses also keep the built-in base they had
(``ValueError``, ``RuntimeError``, ``TypeError``), so callers that catch those still do.
This module imports nothing: it is the lowest layer.
"""

from __future__ import annotations


class CertbenchError(Exception):
    """A user's error (bad input, a missing file, an unusable option): its message is
    one line that names what is wrong."""
