"""User errors: a wrong key, value, file or column. The CLI prints them as one line and exits 2.
NonFinite: training diverged (the recipe turns it into a user error naming the last checkpoint)."""

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Something the user can fix; the message names the key, file or row and the fix."""


def require_one_of(key: str, value, options) -> None:
    """The one-line error for a value outside a fixed set of options."""
    if value not in options:
        raise UserError(f"{key}={value!r} is not one of: {', '.join(str(o) for o in options if o is not None)}")


def require(ok: bool, key: str, message: str) -> None:
    """The one-line error ``key: message`` unless ``ok``."""
    if not ok:
        raise UserError(f"{key}: {message}")


class NonFinite(Exception):
    """The loss or the gradient norm became nan/inf at ``step``; raised before the optimizer step,
    so no update from it reaches the weights (the recipe turns it into a one-line error)."""

    def __init__(self, what: str, value: float, step: int):
        super().__init__(f"{what} became {value} at step {step}")
        self.what, self.value, self.step = what, value, step
