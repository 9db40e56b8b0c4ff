"""User errors: a wrong key, value, file or column. The CLI prints them as one line and exits 2."""

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Something the user can fix; the message names the key, file or row and the fix."""
