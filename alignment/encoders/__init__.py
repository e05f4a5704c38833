"""Encoders from features to voxels, all behind one registry (:mod:`.registry`).

Importing this package registers the built-in kinds; :func:`make_encoder` builds one from its
config entry and the fold's :class:`EncoderContext`.
"""

from alignment.encoders import ridge  # noqa: F401  (registers "ridge")
from alignment.encoders.registry import (
    ENCODERS,
    EncoderContext,
    accepts,
    encoder_kind,
    make_encoder,
    register_encoder,
)

__all__ = [
    "ENCODERS",
    "EncoderContext",
    "accepts",
    "encoder_kind",
    "make_encoder",
    "register_encoder",
]
