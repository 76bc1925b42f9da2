"""What the generated per-loss methods stand on: the catalogue table and the abstract call."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, NamedTuple

from lossd_client._wire import Grad
from lossd_client.models import LossResult


class LossEntry(NamedTuple):
    """A loss as the generator saw the catalogue: input names in order, param names, defaults."""

    inputs: tuple[str, ...]
    params: tuple[str, ...]
    defaults: dict[str, Any]


class SyncLossCaller(ABC):
    @abstractmethod
    def _call_loss(self, name: str, inputs: Mapping[str, Any], params: Mapping[str, Any], grad: Grad) -> LossResult:
        """Compute ``name``, leaving out absent optional inputs and params at their defaults."""


class AsyncLossCaller(ABC):
    @abstractmethod
    async def _call_loss(
        self, name: str, inputs: Mapping[str, Any], params: Mapping[str, Any], grad: Grad
    ) -> LossResult:
        """Compute ``name``, leaving out absent optional inputs and params at their defaults."""
