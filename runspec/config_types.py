"""Field types shared by train configs and sweep specs: strict (no true-as-1, no 8.0-as-8) and bounded.

Floats are kept finite by each model's `allow_inf_nan=False`; the upper bounds below keep a typo such as
`max_steps: 1000000000000` or `seed: 2**70` from reaching the trainer, the planner or Ray.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Strict

MAX_STEPS = 10_000_000
MAX_SEED = 2**32 - 1


def _refuse_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


Integer = Annotated[int, Strict()]
Number = Annotated[float, BeforeValidator(_refuse_bool)]
Flag = Annotated[bool, Strict()]
