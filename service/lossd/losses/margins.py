"""Margins losses."""

from __future__ import annotations

from lossd.spec import LossSpec

SPECS: tuple[LossSpec, ...] = ()
