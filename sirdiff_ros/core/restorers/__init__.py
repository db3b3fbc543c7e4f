"""Restoration backends behind one interface (see :mod:`.base`)."""

from .base import (
    RestoredView,
    RestoreRequest,
    RestoreResult,
    Restorer,
    RestorerError,
    available_restorers,
    create_restorer,
    register_restorer,
)

__all__ = [
    "RestoreRequest",
    "RestoredView",
    "RestoreResult",
    "Restorer",
    "RestorerError",
    "available_restorers",
    "create_restorer",
    "register_restorer",
]
