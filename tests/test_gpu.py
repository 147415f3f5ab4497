"""GPU telemetry: the real no-driver path here, and a fake NVML for the readings."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import pytest

from helios_worker import gpu
from helios_worker.gpu import GpuTelemetry


def _has_nvml() -> bool:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


@pytest.mark.skipif(_has_nvml(), reason="this machine has a working NVML")
def test_without_a_driver_telemetry_is_unavailable_and_quiet() -> None:
    telemetry = GpuTelemetry.open()
    assert telemetry.available is False
    assert "NVML unavailable" in telemetry.reason
    assert telemetry.read() == []
    assert telemetry.energy_joules(0) is None
    telemetry.close()  # nothing to shut down, must not raise


class FakeNVMLError(Exception):
    pass


@dataclass
class FakeBoard:
    name: str
    uuid: str
    memory_used: int
    power_mw: int
    energy_mj: int | None  # None: the board has no energy counter


@dataclass
class FakeNVML:
    """The slice of pynvml that gpu.py calls, over a list of boards in physical order."""

    boards: list[FakeBoard]
    fail_init: bool = False
    calls: list[str] = field(default_factory=list)

    def module(self) -> types.ModuleType:
        module = types.ModuleType("pynvml")
        module.NVMLError = FakeNVMLError
        for name in dir(self):
            if name.startswith("nvml"):
                setattr(module, name, getattr(self, name))
        return module

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise FakeNVMLError("Driver Not Loaded")
        self.calls.append("init")

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.boards)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeBoard:
        return self.boards[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeBoard:
        for board in self.boards:
            if board.uuid == uuid:
                return board
        raise FakeNVMLError("Not Found")

    def nvmlDeviceGetName(self, board: FakeBoard) -> bytes:
        return board.name.encode()  # older bindings return bytes

    def nvmlDeviceGetMemoryInfo(self, board: FakeBoard) -> types.SimpleNamespace:
        return types.SimpleNamespace(used=board.memory_used, total=80 * 2**30)

    def nvmlDeviceGetPowerUsage(self, board: FakeBoard) -> int:
        return board.power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, board: FakeBoard) -> int:
        if board.energy_mj is None:
            raise FakeNVMLError("Not Supported")
        return board.energy_mj


@pytest.fixture
def boards() -> list[FakeBoard]:
    return [
        FakeBoard("A", "GPU-aaaa", 1000, 100_000, 5_000_000),
        FakeBoard("B", "GPU-bbbb", 2000, 250_500, None),
    ]


def install(monkeypatch: pytest.MonkeyPatch, nvml: FakeNVML, visible: str | None = None) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", nvml.module())
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)


def test_readings_from_nvml(monkeypatch: pytest.MonkeyPatch, boards: list[FakeBoard]) -> None:
    nvml = FakeNVML(boards)
    install(monkeypatch, nvml)
    telemetry = GpuTelemetry.open()
    assert telemetry.available and telemetry.num_devices == 2
    boards[0].energy_mj += 1500  # 1.5 J used since open
    first, second = telemetry.read()
    assert (first.index, first.name, first.memory_used_bytes) == (0, "A", 1000)
    assert first.power_watts == pytest.approx(100.0)
    assert first.energy_joules == pytest.approx(1.5)
    assert second.power_watts == pytest.approx(250.5)
    assert second.energy_joules == 0.0  # no counter: integrated power, nothing elapsed yet
    assert telemetry.energy_joules(0) == pytest.approx(1.5)
    telemetry.close()
    assert nvml.calls == ["init", "shutdown"]
    assert telemetry.read() == []


def test_energy_is_integrated_from_power_without_a_counter(
    monkeypatch: pytest.MonkeyPatch, boards: list[FakeBoard]
) -> None:
    install(monkeypatch, FakeNVML(boards), visible="1")
    clock = iter([100.0, 102.0, 103.0])
    monkeypatch.setattr(gpu.time, "perf_counter", lambda: next(clock))
    telemetry = GpuTelemetry.open()
    assert telemetry.read()[0].energy_joules == 0.0  # t=100, 250.5 W
    boards[1].power_mw = 150_500
    assert telemetry.read()[0].energy_joules == pytest.approx(2 * (250.5 + 150.5) / 2)  # t=102
    assert telemetry.read()[0].energy_joules == pytest.approx(401.0 + 150.5)  # t=103, steady


def test_devices_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch, boards: list[FakeBoard]) -> None:
    for visible, names in (("1,0", ["B", "A"]), ("GPU-bbbb", ["B"]), ("0,-1,1", ["A"]), ("MIG-x", ["A", "B"])):
        install(monkeypatch, FakeNVML(boards), visible=visible)
        telemetry = GpuTelemetry.open()
        readings = telemetry.read()
        assert [r.name for r in readings] == names, visible
        assert [r.index for r in readings] == list(range(len(names)))  # torch's numbering


def test_no_visible_device_or_failing_init_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, boards: list[FakeBoard]
) -> None:
    nvml = FakeNVML(boards)
    install(monkeypatch, nvml, visible="")
    telemetry = GpuTelemetry.open()
    assert not telemetry.available and telemetry.reason == "no GPU visible to this process"
    assert nvml.calls == ["init", "shutdown"]
    install(monkeypatch, FakeNVML(boards, fail_init=True))
    telemetry = GpuTelemetry.open()
    assert not telemetry.available and "Driver Not Loaded" in telemetry.reason


def test_a_driver_error_mid_run_gives_no_readings(monkeypatch: pytest.MonkeyPatch, boards: list[FakeBoard]) -> None:
    nvml = FakeNVML(boards)
    install(monkeypatch, nvml)
    telemetry = GpuTelemetry.open()

    def lost(board: FakeBoard) -> None:
        raise FakeNVMLError("GPU is lost")

    monkeypatch.setattr(sys.modules["pynvml"], "nvmlDeviceGetMemoryInfo", lost)
    assert telemetry.read() == []
