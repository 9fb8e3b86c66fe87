"""Base of every parameter model: strict, so a typo in `parameters:` is an error, not a no-op."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
