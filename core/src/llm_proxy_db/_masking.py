"""How a secret is shown where it may be read: ``mask_token``."""

from __future__ import annotations

__all__ = ["mask_token"]


def mask_token(token: str) -> str:
    """The form of a token that is safe to print, e.g. ``sk-Ab...xyz9``.

    Short values (which real tokens never are) keep only their first three characters.
    """
    if len(token) < 16:
        return token[:3] + "..."
    return f"{token[:5]}...{token[-4:]}"
