"""Energy per step from the hardware's own counters: `energy/step_j`, `energy/j_per_token`.

Two counters, both cumulative energy since some origin, read at the start and end of each step:

NVML (NVIDIA GPUs, Volta and newer): `nvmlDeviceGetTotalEnergyConsumption(handle)` is the
  board's energy in millijoules since the driver was loaded, as a 64-bit integer (no wrap in
  practice). Read for each device this process computes on (under torchrun: each rank its own
  GPU; the loop sums ranks). It counts everything on the board, other processes' work included,
  and the driver refreshes it at its own cadence (tens of ms), so a step much shorter than that
  is quantised while sums over many steps are right. Unsupported on MIG slices and pre-Volta
  boards: the call raises and the meter reports why.
RAPL (Intel, and AMD Zen through the same powercap driver): /sys/class/powercap/<zone>/energy_uj,
  microjoules, a counter that wraps to 0 past `max_energy_range_uj`. Only the package zones
  `intel-rapl:<N>` named `package-*` are summed: their sub-zones (core, uncore, dram as children
  `intel-rapl:<N>:<M>`) are parts of or beside a package, `psys` (platform) contains the
  packages, and `intel-rapl-mmio:*` is the same package counter through another interface, so
  any of them would double count. DRAM energy is therefore not included. Since Linux 5.10
  (CVE-2020-8694) energy_uj is readable by root only: then the meter is unavailable, with that
  reason. A wrap between two reads is undone by adding the range once (exact to one counter unit,
  ~61 uJ); two wraps between reads (minutes at full power) cannot be seen.

Neither available: `source` is None and `unavailable` says why. No number is ever estimated.
Energy is device energy only: NVML does not see the host CPU, RAPL does not see a GPU.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

from bench.core.errors import BadInput

POWERCAP = Path("/sys/class/powercap")


class NvmlCounter:
    """Summed NVML energy counters (mJ) of the given device handles."""
    source = "nvml"
    node_wide = False  # each rank reads its own GPU: ranks' energies add up

    def __init__(self, nvml, handles: list):
        self.nvml, self.handles = nvml, handles

    def read_uj(self) -> int:
        return sum(int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(h)) for h in self.handles) * 1000


def open_nvml(device: torch.device, nvml=None) -> NvmlCounter:
    """NVML counter of `device`, found by UUID (NVML numbers GPUs physically, CUDA after
    CUDA_VISIBLE_DEVICES). Raises RuntimeError with the reason when NVML cannot serve it."""
    if nvml is None:
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError:
            raise RuntimeError("pynvml is not installed (pip install nvidia-ml-py)") from None
    try:
        nvml.nvmlInit()
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        handle = nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-")) else "GPU-" + uuid)
        counter = NvmlCounter(nvml, [handle])
        counter.read_uj()  # unsupported boards (MIG, pre-Volta) fail here, not mid-run
    except Exception as e:  # pynvml.NVMLError and its subclasses; CUDA errors from the uuid query
        raise RuntimeError(f"NVML energy counter unavailable on {device}: {e}") from None
    return counter


class RaplCounter:
    """Summed package energy (uJ) of the RAPL powercap zones, with wrap correction per zone."""
    source = "rapl"
    node_wide = True  # every rank on a node reads the same packages: count one rank per node

    def __init__(self, zones: list[tuple[Path, int]]):
        self.zones = zones  # (energy_uj path, max_energy_range_uj)
        self._last = [int(p.read_text()) for p, _ in zones]
        self._total = 0

    def read_uj(self) -> int:
        """Energy since construction: the sum of each zone's wrap-corrected increments."""
        for i, (path, rng) in enumerate(self.zones):
            now = int(path.read_text())
            delta = now - self._last[i]
            self._total += delta if delta >= 0 else delta + rng  # the counter passed its range once
            self._last[i] = now
        return self._total


def open_rapl(root: Path = POWERCAP) -> RaplCounter:
    """The package zones under `root` (see the module docstring). RuntimeError with the reason
    when there are none or they cannot be read."""
    if not root.is_dir():
        raise RuntimeError(f"RAPL: {root} does not exist (no powercap driver, or not exposed here)")
    zones = []
    for z in sorted(root.glob("intel-rapl:*")):
        if z.name.count(":") != 1:  # intel-rapl:N:M is a sub-zone of package N
            continue
        try:
            if not (z / "name").read_text().strip().startswith("package"):
                continue  # psys: the platform, which contains the packages
            zones.append((z / "energy_uj", int((z / "max_energy_range_uj").read_text())))
            int(zones[-1][0].read_text())
        except PermissionError:
            raise RuntimeError(f"RAPL: {z}/energy_uj is not readable by this user "
                               "(root-only since Linux 5.10, CVE-2020-8694)") from None
        except (OSError, ValueError) as e:
            raise RuntimeError(f"RAPL: cannot read {z}: {e}") from None
    if not zones:
        raise RuntimeError(f"RAPL: no package zone (intel-rapl:N named package-*) under {root}")
    return RaplCounter(zones)


class EnergyMeter:
    """Per-step and total energy of one process's devices. `source` is "nvml", "rapl" or None; when
    None, `unavailable` holds the reason and every step yields no energy metrics.

    `begin()` / `end(tokens)` bracket a step (PhaseTimer calls them at its own step boundaries);
    `end` returns {"energy/step_j", "energy/j_per_token"} (the latter only with tokens > 0).
    Under torchrun: with `node_wide` False (NVML) each rank measures its own device and the run's
    energy is the sum over ranks; with `node_wide` True (RAPL) all ranks of a node read the same
    packages, so only one rank per node may be counted.
    """

    def __init__(self, counter=None, unavailable: str | None = None):
        self.counter, self.unavailable = counter, unavailable
        self.source = None if counter is None else counter.source
        self.node_wide = bool(getattr(counter, "node_wide", False))
        self.total_uj, self._t0 = 0, None
        self.tokens_uj, self.total_tokens = 0, 0  # over the steps that reported a token count

    @classmethod
    def create(cls, device: torch.device | str, source: str = "auto", *, powercap: Path = POWERCAP,
               nvml=None) -> "EnergyMeter":
        """auto: NVML for a CUDA device, RAPL for CPU, else unavailable with the reason. A named
        source that cannot be read here is bad input (timing.energy=...), raised before compute."""
        device = torch.device(device)
        if source == "off":
            return cls(unavailable="timing.energy=off")
        if source == "auto":
            source = "nvml" if device.type == "cuda" else "rapl" if device.type == "cpu" else None
            if source is None:
                return cls(unavailable=f"no energy counter for device type {device.type}")
            forced = False
        else:
            forced = True
        try:
            if source == "nvml":
                if device.type != "cuda":
                    raise RuntimeError(f"NVML measures NVIDIA GPUs; this run's device is {device}")
                return cls(open_nvml(device, nvml))
            if source == "rapl":
                return cls(open_rapl(powercap))
            raise BadInput(f"timing.energy={source!r}; valid: auto, nvml, rapl, off")
        except RuntimeError as e:
            if forced:
                raise BadInput(f"timing.energy={source}: {e}; valid here: auto, off") from None
            return cls(unavailable=str(e))

    def begin(self) -> None:
        if self.counter is not None:
            self._t0 = self.counter.read_uj()

    def end(self, tokens: int | None = None) -> dict[str, float]:
        if self.counter is None or self._t0 is None:
            return {}
        uj = self.counter.read_uj() - self._t0
        self._t0 = None
        self.total_uj += uj
        out = {"energy/step_j": uj / 1e6}
        if tokens:
            self.tokens_uj += uj
            self.total_tokens += tokens
            out["energy/j_per_token"] = uj / (1e6 * tokens)  # one rounding: 1e6 * tokens is exact
        return out

    def add_rows(self, rows: list[dict]) -> None:
        """Resume: count the energy of the steps already in metrics.jsonl (their `energy/step_j`;
        tokens recovered as step_j / j_per_token, rounded: they are integers)."""
        for r in rows:
            j = r.get("energy/step_j")
            if not isinstance(j, (int, float)):
                continue
            self.total_uj += round(j * 1e6)
            jpt = r.get("energy/j_per_token")
            if isinstance(jpt, (int, float)) and jpt > 0:
                self.tokens_uj += round(j * 1e6)
                self.total_tokens += round(j / jpt)

    def run_summary(self, info=None, mean=None) -> dict:
        """summary.json's `energy` for the whole run. info: the torchrun DistInfo (None: this
        process alone; every rank must call it together) and `mean(x, info)` its cross-rank mean
        (bench.train.distributed.mean, passed in: this module sits below the process-group layer).
        NVML (per-device counters): the ranks' joules and tokens are summed. RAPL (node_wide:
        every rank reads the same packages of one node): rank 0's reading alone, with the node's
        tokens. `ranks` says which."""
        out = self.summary()
        if self.source is None or info is None or not info.enabled:
            return out
        if self.node_wide:
            return {**out, "ranks": "node (rank 0's reading of the shared packages)"}
        total, tok_uj, tokens = (mean(float(x), info) * info.world
                                 for x in (self.total_uj, self.tokens_uj, self.total_tokens))
        return {"source": self.source, "total_j": total / 1e6, "j_per_token": tok_uj / (1e6 * tokens) if tokens else None,
                "ranks": info.world}

    def summary(self) -> dict:
        """summary.json's `energy`: joules over the measured steps (begin..end, so between-step
        work such as an eval outside the timed step is not in it) and joules per token over the
        steps that gave a token count; or why there are none."""
        if self.source is None:
            return {"source": None, "unavailable": self.unavailable}
        return {"source": self.source, "total_j": self.total_uj / 1e6,
                "j_per_token": self.tokens_uj / (1e6 * self.total_tokens) if self.total_tokens else None}
