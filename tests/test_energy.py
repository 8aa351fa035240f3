"""Energy meter: RAPL through a fake powercap tree, NVML through a fake pynvml module, and this
machine's real answer (a positive number or a reason). Expected joules are written out by hand
from the counter values the fakes hold."""
from __future__ import annotations

import pathlib
import sys
import time
import types

import pytest
import torch

from bench.perf.energy import EnergyMeter, NvmlCounter, open_rapl
from bench.core.errors import BadInput
from bench.perf.timing import PhaseTimer, TimingConfig


def zone(root: pathlib.Path, name: str, label: str, energy: int, rng: int = 10**6) -> pathlib.Path:
    z = root / name
    z.mkdir(parents=True)
    (z / "name").write_text(label + "\n")
    (z / "energy_uj").write_text(f"{energy}\n")
    (z / "max_energy_range_uj").write_text(f"{rng}\n")
    return z / "energy_uj"


@pytest.fixture
def powercap(tmp_path):
    """Two packages with their sub-zones, a psys zone and the MMIO twin of package 0: only the two
    package counters may be summed."""
    root = tmp_path / "powercap"
    files = {"pkg0": zone(root, "intel-rapl:0", "package-0", 900, rng=1000),
             "core0": zone(root, "intel-rapl:0:0", "core", 5000),
             "dram0": zone(root, "intel-rapl:0:1", "dram", 7000),
             "pkg1": zone(root, "intel-rapl:1", "package-1", 100, rng=500),
             "psys": zone(root, "intel-rapl:2", "psys", 30000),
             "mmio": zone(root, "intel-rapl-mmio:0", "package-0", 900, rng=1000)}
    return root, files


def set_counters(files, **values):
    for k, v in values.items():
        files[k].write_text(f"{v}\n")


def test_rapl_sums_package_zones_only_and_undoes_a_wrap(powercap):
    root, files = powercap
    meter = EnergyMeter.create("cpu", "auto", powercap=root)
    assert meter.source == "rapl" and meter.unavailable is None and meter.node_wide  # one rank per node
    meter.begin()
    set_counters(files, pkg0=950, pkg1=130, core0=9000, dram0=9000, psys=90000, mmio=950)
    m1 = meter.end(tokens=10)
    assert m1 == {"energy/step_j": 80e-6, "energy/j_per_token": 8e-6}  # (950-900) + (130-100) uJ
    meter.begin()
    # package 0 wraps at its range of 1000 uJ: 950 -> 1000 == 0 -> 20 is 70 uJ
    set_counters(files, pkg0=20, pkg1=160, core0=1, psys=1, mmio=20)
    m2 = meter.end(tokens=4)
    assert m2["energy/step_j"] == 100e-6 and m2["energy/j_per_token"] == 25e-6
    assert meter.summary() == {"source": "rapl", "total_j": 180e-6, "j_per_token": 180e-6 / 14}


def test_rapl_energy_between_steps_is_not_charged_to_a_step(powercap):
    root, files = powercap
    meter = EnergyMeter.create("cpu", "rapl", powercap=root)
    meter.begin()
    set_counters(files, pkg0=910)
    assert meter.end(None) == {"energy/step_j": 10e-6}  # no tokens: no per-token number
    assert meter.end(3) == {}  # no step open
    set_counters(files, pkg0=990)  # an eval between steps
    meter.begin()
    set_counters(files, pkg0=995)
    assert meter.end(5)["energy/step_j"] == 5e-6
    assert meter.summary() == {"source": "rapl", "total_j": 15e-6, "j_per_token": 1e-6}


def test_rapl_unreadable_counter_is_unavailable_with_the_reason(powercap, monkeypatch):
    root, _ = powercap
    real = pathlib.Path.read_text

    def read_text(self, *a, **k):
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)
    meter = EnergyMeter.create("cpu", "auto", powercap=root)
    assert meter.source is None and "not readable" in meter.unavailable and "intel-rapl:0" in meter.unavailable
    meter.begin()
    assert meter.end(8) == {}
    assert meter.summary() == {"source": None, "unavailable": meter.unavailable}
    with pytest.raises(BadInput, match="timing.energy=rapl: RAPL: .*not readable.*valid here: auto, off"):
        EnergyMeter.create("cpu", "rapl", powercap=root)


def test_rapl_missing_or_packageless_tree_is_unavailable(tmp_path):
    m = EnergyMeter.create("cpu", "auto", powercap=tmp_path / "nope")
    assert m.source is None and "does not exist" in m.unavailable
    zone(tmp_path / "pc", "intel-rapl:0", "psys", 5)
    m = EnergyMeter.create("cpu", "auto", powercap=tmp_path / "pc")
    assert m.source is None and "no package zone" in m.unavailable
    assert open_rapl  # the loader is public: perf tools read package energy without a meter


class FakeNvml(types.ModuleType):
    """pynvml's surface the meter uses: init, handle by UUID, total energy in mJ."""

    class NVMLError(Exception):
        pass

    def __init__(self, energy_mj: dict[str, list[int]], fail: bool = False):
        super().__init__("pynvml")
        self.energy, self.fail, self.inited = energy_mj, fail, False

    def nvmlInit(self):
        self.inited = True

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if uuid not in self.energy:
            raise self.NVMLError("Not Found")
        return uuid

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if self.fail:
            raise self.NVMLError("Not Supported")
        return self.energy[handle].pop(0)


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(uuid="1234-abcd"))


def test_nvml_energy_is_the_counter_difference_of_the_device_in_use(monkeypatch, fake_cuda):
    # the first reading is open_nvml's probe; then begin/end pairs
    fake = FakeNvml({"GPU-1234-abcd": [10_000, 10_000, 12_500, 20_000, 20_001], "GPU-other": [0] * 5})
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    meter = EnergyMeter.create("cuda:0", "auto")
    assert fake.inited and meter.source == "nvml" and not meter.node_wide  # ranks' GPUs add up
    meter.begin()
    assert meter.end(tokens=1000) == {"energy/step_j": 2.5, "energy/j_per_token": 2.5e-3}
    meter.begin()
    assert meter.end(tokens=1) == {"energy/step_j": 1e-3, "energy/j_per_token": 1e-3}
    assert meter.summary() == {"source": "nvml", "total_j": 2.501, "j_per_token": 2.501 / 1001}


def test_nvml_counter_sums_every_handle_in_microjoules():
    fake = FakeNvml({"a": [3], "b": [4]})
    assert NvmlCounter(fake, ["a", "b"]).read_uj() == 7000


def test_nvml_unsupported_board_is_unavailable_or_bad_input_when_forced(monkeypatch, fake_cuda):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml({"GPU-1234-abcd": [1]}, fail=True))
    m = EnergyMeter.create("cuda:0", "auto")
    assert m.source is None and "Not Supported" in m.unavailable and "cuda:0" in m.unavailable
    with pytest.raises(BadInput, match="timing.energy=nvml: NVML energy counter unavailable on cuda:0"):
        EnergyMeter.create("cuda:0", "nvml")


def test_missing_pynvml_names_the_package(monkeypatch, fake_cuda):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    m = EnergyMeter.create("cuda", "auto")
    assert m.source is None and "nvidia-ml-py" in m.unavailable


def test_nvml_on_a_cpu_run_and_off_are_explicit():
    with pytest.raises(BadInput, match="NVML measures NVIDIA GPUs; this run's device is cpu"):
        EnergyMeter.create("cpu", "nvml")
    assert EnergyMeter.create("cpu", "off").summary() == {"source": None, "unavailable": "timing.energy=off"}


def test_this_machine_gives_positive_energy_or_a_reason():
    meter = EnergyMeter.create("cuda" if torch.cuda.is_available() else "cpu", "auto")
    timer = PhaseTimer(TimingConfig(), "cpu", energy=meter)
    timer.begin_step(0)
    with timer.phase("update"):
        t = time.perf_counter()
        x = torch.randn(256, 256)
        while time.perf_counter() - t < 0.2:  # long enough for any counter's refresh
            x = (x @ x).tanh()
    m = timer.end_step(tokens=100)
    if meter.source is None:
        assert meter.unavailable and "energy/step_j" not in m
        assert meter.summary()["unavailable"] == meter.unavailable
    else:
        assert m["energy/step_j"] > 0 and m["energy/j_per_token"] > 0
        assert meter.summary()["total_j"] > 0
