"""Size limits written the way Kubernetes (and so daprd) writes them.

`--max-body-size 4Mi` and `--read-buffer-size 4Ki` must mean what they mean to
daprd, so a config moved between the two sidecars keeps its limits.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from fastproxy.config.errors import ConfigError

_MULTIPLIERS: dict[str, int] = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}

_QUANTITY = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)(?P<suffix>[KMGTPE]i|[kMGTPE])?")


def parse_quantity(text: str) -> int:
    """Return the byte count `text` stands for, rounding a fractional result up.

    Rounding up follows Kubernetes: a limit is never made smaller than written.
    """
    match = _QUANTITY.fullmatch(text.strip())
    if match is None:
        raise ConfigError(_problem(text))
    multiplier = _MULTIPLIERS[match["suffix"] or ""]
    return math.ceil(Fraction(match["number"]) * multiplier)


def _problem(text: str) -> str:
    if text.strip().startswith("-"):
        return f"invalid quantity {text!r}: must not be negative"
    return (
        f"invalid quantity {text!r}: expected a number with an optional suffix "
        "(Ki, Mi, Gi, Ti for powers of 1024; k, M, G, T for powers of 1000)"
    )
