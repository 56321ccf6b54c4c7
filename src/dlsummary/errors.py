"""The one exception type the library raises for a user's mistake."""

from __future__ import annotations


class DLSummaryError(ValueError):
    """Raised when a tool is given something it cannot handle.

    The message names the offending thing (a layer's qualified name and type, the shape
    given and the one expected, the file) and says what to do instead. The CLI prints it
    as a one-line error and exits with code 2.
    """
