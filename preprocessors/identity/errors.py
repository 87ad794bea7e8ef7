"""Errors of the identity stage, with messages meant for the webui user."""


class IdentityError(RuntimeError):
    """The identity of a reference photo cannot be computed."""


class ImageError(IdentityError):
    """The input is not a readable image."""


class NoFaceError(IdentityError):
    """No face was found in a reference photo."""
