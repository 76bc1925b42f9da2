"""The loss catalogue: every served loss, grouped by family, looked up by name or alias."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from rapidfuzz import fuzz, process

from lossd.losses import (
    adversarial,
    classification,
    detection,
    margins,
    metric,
    perceptual,
    regression,
    segmentation,
    sequences,
)
from lossd.spec import LossSpec

# Names are at most a few dozen characters; a longer request path is compared by its start.
_SUGGEST_CHARS = 64

FAMILIES = (classification, margins, regression, segmentation, detection, perceptual, metric, adversarial, sequences)


class Catalogue:
    """Name/alias lookup over a fixed set of loss specs."""

    def __init__(self, specs: Iterable[LossSpec]) -> None:
        self._specs: dict[str, LossSpec] = {}
        self._names: dict[str, str] = {}
        for spec in specs:
            for n in (spec.name, *spec.aliases):
                if n in self._names:
                    raise ValueError(f"duplicate loss name or alias {n!r}")
                self._names[n] = spec.name
            self._specs[spec.name] = spec
        self._lower = [k.lower() for k in self._names]
        self._lower_canonical = list(self._names.values())

    def get(self, name: str) -> LossSpec | None:
        canonical = self._names.get(name)
        return self._specs[canonical] if canonical is not None else None

    def closest(self, name: str, n: int = 3) -> list[str]:
        """The ``n`` canonical names closest to a misspelt one, ignoring case (for 404 details).

        Every unknown name pays for this, so it must stay cheap whatever a client sends:
        rapidfuzz (about 20 µs against the whole catalogue, where difflib took 1.7 ms) on at most
        the first ``_SUGGEST_CHARS`` characters (no name is that long).
        """
        hits = process.extract(name[:_SUGGEST_CHARS].lower(), self._lower, scorer=fuzz.ratio, limit=None)
        out: list[str] = []
        for _, _, i in hits:
            c = self._lower_canonical[i]
            if c not in out:
                out.append(c)
        return out[:n]

    def __iter__(self) -> Iterator[LossSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._names


def default_catalogue() -> Catalogue:
    """Every loss of losses.md."""
    return Catalogue(spec for family in FAMILIES for spec in family.SPECS)
