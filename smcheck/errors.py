"""The one error family smcheck raises on purpose.

The CLI maps :class:`InputError` (and :class:`UsageError`) to a one-line message on stderr and
exit status 2; anything else that escapes is an internal error (exit 3).
"""

from __future__ import annotations


class SmcheckError(Exception):
    """Base class of every error smcheck raises deliberately."""


class InputError(SmcheckError, ValueError):
    """Bad input data: names the file, row/column or key, the problem and what was expected.

    Subclasses ``ValueError`` so library users can catch it the usual way, e.g.
    ``InputError("labels.npy row 7: label 12 is outside [0, 10)")``.
    """


class UsageError(SmcheckError, ValueError):
    """A bad combination of options or arguments (unknown dtype, method, format...)."""
