"""Several engines in one process: which devices ``--devices`` names."""

from __future__ import annotations

import torch


def expand_devices(spec: str, cpu_engines: int = 1) -> list[str]:
    """The device list for one engine each: ``all``, or a comma list (``cuda:0,cuda:1``, ``cpu,cpu``).

    ``all`` is every CUDA device, or ``cpu_engines`` CPU engines where there is none. In a list, ``auto``
    is ``cuda:0`` or ``cpu`` and ``cuda`` is ``cuda:0``, so that one device is not listed twice. Repeated
    ``cpu`` entries become ``cpu:0, cpu:1, ...`` (the same host memory for torch) so that each
    engine has its own label in /v1/info and /metrics; a lone ``cpu`` stays ``cpu``.
    """
    names = [_canonical(d.strip()) for d in spec.split(",") if d.strip()]
    if not names:
        raise ValueError("no device given")
    if names == ["all"]:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        names = [f"cuda:{i}" for i in range(n)] if n else ["cpu"] * cpu_engines
    elif "all" in names:
        raise ValueError("'all' cannot be combined with other devices")
    if "cpu" in names and sum(n.split(":")[0] == "cpu" for n in names) > 1:
        taken = {n for n in names if n.startswith("cpu:")}
        free = (f"cpu:{i}" for i in range(len(names) + len(taken)) if f"cpu:{i}" not in taken)
        names = [next(free) if n == "cpu" else n for n in names]
    if len(set(names)) != len(names):
        raise ValueError(f"device listed twice in {spec!r}")
    return names


def _canonical(name: str) -> str:
    """The one name of a device that has several (``auto``, ``cuda`` = ``cuda:0`` in a fresh process)."""
    if name == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    return "cuda:0" if name == "cuda" else name
