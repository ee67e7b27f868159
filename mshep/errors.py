"""Pure. Errors a user can act on: each message names the problem (field, column, row, value, URL)
and is shown without a traceback by the CLI."""


class MshepError(Exception):
    """Base of the errors that are the user's to fix, not a bug."""


class ConfigError(MshepError):
    pass


class DatasetError(MshepError):
    pass


class BackendUnavailable(MshepError):
    """The model endpoint cannot be reached or refuses every request."""


class MissingToken(MshepError):
    pass


class MissingDependency(MshepError):
    """An optional extra is needed: the message says which to install."""


class OutputError(MshepError):
    """The output path cannot be written."""


def one_line(error: BaseException) -> str:
    """An error as one line: its type and message (fsspec and botocore messages span lines)."""
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
