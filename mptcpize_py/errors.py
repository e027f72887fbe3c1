"""One exception base for every error a user sees; cli.py turns it into one line and an exit code."""

# Exit codes (see README "Exit status").
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NO_DAEMON = 3
EXIT_UNAVAILABLE = 69
EXIT_PERMISSION = 77
EXIT_BAD_POLICY = 78
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


class MptcpizeError(Exception):
    """An error with a one-line message, an optional hint and the exit code it maps to."""

    exit_code = EXIT_FAILURE
    compiler_output: str | None = None   # the compiler's whole output (the loader child writes it out)

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(MptcpizeError):
    exit_code = EXIT_USAGE


class Unavailable(MptcpizeError):
    """A kernel or host feature that the requested operation needs is missing."""

    exit_code = EXIT_UNAVAILABLE


class PermissionDenied(MptcpizeError):
    exit_code = EXIT_PERMISSION
