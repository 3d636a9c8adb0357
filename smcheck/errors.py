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


def dims(shape: tuple[int, ...]) -> str:
    """A shape as messages write it, like the report's ``4 x 32 x 512`` (no Python tuple:
    ``(5,)`` reads as code, not as a size).

    >>> dims((4, 32, 512)), dims((5,)), dims(())
    ('4 x 32 x 512', '5', '0-d')
    """
    return " x ".join(str(int(d)) for d in shape) if len(shape) else "0-d"
