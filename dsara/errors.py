"""One exception type for every user-facing problem.

A `DsaraError` carries a one-line message that says what is wrong and what to do; the command line
prints it as ``dsara: error: <message>`` and exits with status 2, without a traceback.
"""


class DsaraError(Exception):
    """A problem with the user's input or environment, reported as one clear line."""


class Interrupted(DsaraError):
    """Ctrl-C or SIGTERM stopped a run; what was checkpointed before stays valid."""
