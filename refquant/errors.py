"""Errors refquant raises on bad input. Each message names what was wrong and what was expected."""


class RefquantError(ValueError):
    """Base class: bad input to a refquant function or command."""


class FormatError(RefquantError):
    """Unknown format, or a format that cannot do what was asked."""


class InputError(RefquantError):
    """An array that does not fit the format: dtype, shape, length, non-finite values."""


class FileFormatError(RefquantError):
    """A file that is not what it claims to be: truncated, wrong magic, bad offsets."""
