"""The one exception type raised for corrupt or inconsistent encoded masks."""

from __future__ import annotations

__all__ = ["CodecError"]


class CodecError(ValueError):
    """Encoded mask bytes are corrupt, truncated, too long or inconsistent with ``n``.

    Raised only by the decoders, always with a message naming the problem. Errors in the
    caller's own arguments (wrong dtype, negative ``n``, unknown codec) are plain
    ``TypeError``/``ValueError`` instead.
    """
