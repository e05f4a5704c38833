"""Encoders from features to voxels, all behind one registry (:mod:`.registry`).

The built-in kinds (ridge, routing, incontext) are listed in ``registry.BUILTIN`` and their
modules imported when first built, so pairing models with encoders stays light;
:func:`make_encoder` builds one from its config entry and the fold's :class:`EncoderContext`.
"""

from alignment.encoders.registry import (
    BUILTIN,
    ENCODERS,
    EncoderContext,
    accepts,
    encoder_kind,
    make_encoder,
    register_encoder,
)

__all__ = [
    "BUILTIN",
    "ENCODERS",
    "EncoderContext",
    "accepts",
    "encoder_kind",
    "make_encoder",
    "register_encoder",
]
