"""Errors the command line turns into one clear message and exit status 2."""


class InputError(Exception):
    """Bad user input (missing file, wrong column, size mismatch...).

    The message must name the culprit (file, column, particle index) and say what was expected.
    The CLI catches it, logs the message once and exits with status 2.
    """


def require(ok, option, value, expected):
    """Raise :class:`InputError` ``"<option> must be <expected>, not <value>"`` unless ``ok``.

    Write ``ok`` so that NaN fails it (``value > 0``, not ``not value <= 0``).
    """
    if not ok:
        raise InputError(f"{option} must be {expected}, not {value!r}")
