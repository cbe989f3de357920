"""The compression option of a session (:class:`Compression`, its text form) and the byte layout it
gives a payload: how long each tensor's section is, so a receiver checks a payload before reading it.
The codecs themselves are in :mod:`fedn.compression`, which re-exports all of this.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedn.codec import TensorSpec
from fedn.errors import InvalidArgument, validation_problem

__all__ = [
    "CODECS",
    "Compression",
    "block_width",
    "check_downlink",
    "compressed_payload_bytes",
    "compressible",
    "downlink_payload_bytes",
    "parse_compression",
    "scale_count",
    "section_bytes",
    "topk_count",
]

CODECS = ("none", "float16", "int8", "topk")


class Compression(BaseModel):
    """How updates (or the global model) are compressed; see the module docstring for each codec."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    codec: Literal["none", "float16", "int8", "topk"] = "none"
    block: int = Field(
        256,
        ge=0,
        le=2**63 - 1,  # an int of over 4300 digits has no text (Python refuses to print it): no canonical form
        description="int8: values per float32 scale; 0 = one scale per tensor",
    )
    stochastic: bool = Field(True, description="int8 uplink: unbiased stochastic rounding; False = nearest")
    ratio: float = Field(0.01, gt=0.0, le=1.0, description="topk: share of each tensor's entries kept")
    error_feedback: bool = Field(True, description="the client adds what compression lost to its next delta")
    warmup: int = Field(
        0,
        ge=0,
        le=100,
        description="topk: the first rounds keep more, 25%, 6.25%, ... of each tensor (4x less each round, never "
        "below ratio), as Deep Gradient Compression warms up; 0 = ratio from the first round",
    )

    momentum: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="topk with error feedback: momentum correction, as in Deep Gradient Compression; the client "
        "keeps a velocity u = momentum * u + delta, adds u to its residual, and zeroes both where an entry is "
        "sent; 0 = plain error feedback",
    )

    @model_validator(mode="after")
    def _topk_options(self) -> Compression:
        if self.warmup and self.codec != "topk":
            raise ValueError(f"warmup applies to topk only, not {self.codec}")
        if self.momentum and (self.codec != "topk" or not self.error_feedback):
            raise ValueError("momentum applies to topk with error feedback only")
        return self

    def for_round(self, index: int) -> Compression:
        """The codec of round ``index`` (from 1): with a warm-up, top-k of that round's share, else itself.
        The round's codec is what the plan names, the client encodes with and the combiner checks."""
        if not self.warmup:
            return self
        share = self.ratio if index > self.warmup else min(1.0, max(self.ratio, 0.25 ** max(1, index)))
        return self.model_copy(update={"ratio": share, "warmup": 0})

    def text(self) -> str:
        """Canonical spelling: the codec, its main parameter, and every other non-default parameter."""
        always = {"int8": ("block",), "topk": ("ratio",)}.get(self.codec, ())
        parts = []
        for name in ("block", "stochastic", "ratio", "error_feedback", "warmup", "momentum"):
            value = getattr(self, name)
            if name in always or value != type(self).model_fields[name].default:
                parts.append(f"{name}={str(value).lower() if isinstance(value, bool) else repr(value)}")
        return self.codec + (":" + ",".join(parts) if parts else "")

    @property
    def lossless(self) -> bool:
        return self.codec == "none"


def parse_compression(value: str | Mapping[str, object] | Compression | None) -> Compression:
    """A :class:`Compression` from text (``"int8:block=64,stochastic=false"``, ``"topk:ratio=0.01"``,
    ``"float16"``, ``"none"``; ``""`` or None is none), a mapping of its fields, or itself."""
    if value is None:
        return Compression()
    if isinstance(value, Compression):
        return value
    if isinstance(value, Mapping):
        fields: dict[str, object] = dict(value)
    elif isinstance(value, str):
        fields = _parse_text(value)
    else:
        raise InvalidArgument(f"compression must be text or a mapping, got {type(value).__name__}")
    try:
        return Compression.model_validate(fields)
    except ValidationError as exc:
        # a mapping's repr can fail (an int of over 4300 digits); pydantic's messages name its fields
        raise validation_problem(exc, f"compression {value!r}" if isinstance(value, str) else "compression") from None


def _parse_text(text: str) -> dict[str, object]:
    text = text.strip()
    if not text:
        return {}
    codec, _, rest = text.partition(":")
    codec = codec.strip().lower()
    if codec not in CODECS:
        raise InvalidArgument(f"unknown compression codec {codec!r}; choose one of {', '.join(CODECS)}")
    fields: dict[str, object] = {"codec": codec}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not raw:
            raise InvalidArgument(f"compression parameter {item!r} is not name=value")
        if key not in Compression.model_fields or key == "codec":
            known = ", ".join(f for f in Compression.model_fields if f != "codec")
            raise InvalidArgument(f"unknown compression parameter {key!r}; known: {known}")
        if key in fields:
            raise InvalidArgument(f"compression parameter {key!r} given twice")
        fields[key] = raw  # pydantic turns "64", "0.01", "false" into the field's type
    return fields


def compressible(spec: TensorSpec, c: Compression) -> bool:
    return c.codec != "none" and np.dtype(spec.dtype).kind == "f"


def scale_count(n: int, block: int) -> int:
    if n == 0:
        return 0
    return 1 if block == 0 else -(-n // block)


def block_width(n: int, block: int) -> int:
    """The int8 block a tensor of ``n`` values is cut into; 0 (one scale for the whole tensor) when
    ``block`` is 0 or covers it all, so a huge ``block`` never sizes a buffer."""
    return 0 if block == 0 or block >= n else block


def topk_count(n: int, ratio: float) -> int:
    return min(n, max(1, math.ceil(ratio * n)))


def section_bytes(spec: TensorSpec, c: Compression) -> int:
    """Bytes of ``spec``'s section in a payload compressed with ``c``."""
    if not compressible(spec, c):
        return spec.nbytes
    n = spec.size
    if c.codec == "float16":
        return 2 * n
    if c.codec == "int8":
        return 4 * scale_count(n, c.block) + n
    return 8 * topk_count(n, c.ratio)


def compressed_payload_bytes(manifest: Sequence[TensorSpec], c: Compression) -> int:
    """Bytes of an update payload compressed with ``c``."""
    return sum(section_bytes(spec, c) for spec in manifest)


def downlink_payload_bytes(manifest: Sequence[TensorSpec], c: Compression) -> int:
    """Bytes of a global model payload compressed with ``c`` (none, float16 or int8)."""
    check_downlink(c)
    return compressed_payload_bytes(manifest, c)


def check_downlink(c: Compression) -> None:
    if c.codec == "topk":
        raise InvalidArgument("topk cannot compress a whole model; use it for updates")
