"""The one exception type for a usage error: a bad name, value, path or device given by the user.

The CLI's error boundary (``optbench.cli.main``) turns a ``UsageError`` into exit status 2 and
one line on stderr, with no traceback (``--debug`` shows it). Raise it wherever user input is
resolved and found wanting, *before* any training starts, with a message that names the bad
value and the accepted ones::

    raise UsageError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")

It subclasses ``ValueError`` so that library callers who catch ``ValueError`` keep working.
"""

from __future__ import annotations


class UsageError(ValueError):
    """Bad user input, found before anything runs; the message names the value and the accepted ones."""
