"""GPU telemetry from NVML that degrades to "not available" instead of failing.

Workers run on nodes with and without GPUs (and tests run on laptops), so nothing here
raises for lack of a driver: ``GpuTelemetry.open()`` returns an object whose ``available``
is False and whose readings are empty. Devices are the ones this process can see, in
``CUDA_VISIBLE_DEVICES`` order, so reading ``i`` is the GPU that torch calls ``cuda:i``.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GpuReading:
    index: int  # as torch numbers it (cuda:index), not the physical NVML index
    name: str
    memory_used_bytes: int
    power_watts: float | None  # None where the board does not report power
    energy_joules: float | None  # since NVML init: the driver's counter, else integrated power


class _Device:
    """One visible GPU; integrates power when the driver has no energy counter (pre-Volta)."""

    def __init__(self, nvml: Any, index: int, handle: Any) -> None:
        self.nvml = nvml
        self.index = index
        self.handle = handle
        name = nvml.nvmlDeviceGetName(handle)
        self.name = name.decode() if isinstance(name, bytes) else str(name)
        self.energy_start_mj = self._energy_counter_mj()
        self.has_energy_counter = self.energy_start_mj is not None
        self.integrated_joules = 0.0
        self.last_power: tuple[float, float] | None = None  # (perf_counter, watts)

    def _energy_counter_mj(self) -> int | None:
        try:
            return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except self.nvml.NVMLError:
            return None

    def _power_watts(self) -> float | None:
        try:
            return self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0  # NVML reports mW
        except self.nvml.NVMLError:
            return None

    def read(self) -> GpuReading:
        memory = int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)
        power = self._power_watts()
        if self.has_energy_counter:
            counter = self._energy_counter_mj()
            energy = None if counter is None else (counter - self.energy_start_mj) / 1000.0
        else:
            energy = self._integrate(power)
        return GpuReading(self.index, self.name, memory, power, energy)

    def _integrate(self, power: float | None) -> float | None:
        """Trapezoid rule between reads: only as good as the read rate, so callers read often."""
        if power is None:
            return None
        now = time.perf_counter()
        if self.last_power is not None:
            then, previous = self.last_power
            self.integrated_joules += (previous + power) / 2 * (now - then)
        self.last_power = (now, power)
        return self.integrated_joules


def _visible_handles(nvml: Any) -> list[Any]:
    """NVML handles in CUDA_VISIBLE_DEVICES order (indices or GPU-UUIDs); all devices if unset.

    Anything we cannot map simply (MIG ids, bad entries) falls back to all devices: telemetry
    for too many GPUs beats none.
    """
    count = nvml.nvmlDeviceGetCount()
    everything = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return everything
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    handles = []
    for entry in entries:
        if entry.isdigit() and int(entry) < count:
            handles.append(everything[int(entry)])
        elif entry.startswith("GPU-"):
            try:
                handles.append(nvml.nvmlDeviceGetHandleByUUID(entry))
            except nvml.NVMLError:
                return everything
        elif entry.lstrip("-").isdigit():
            break  # CUDA stops at the first invalid index (e.g. -1): later entries are hidden
        else:
            return everything
    return handles


class GpuTelemetry:
    """Memory, power and energy of the visible GPUs; ``available`` False means no readings."""

    def __init__(self, nvml: Any = None, devices: list[_Device] | None = None, reason: str | None = None) -> None:
        self._nvml = nvml
        self._devices = devices or []
        self.reason = reason  # why telemetry is unavailable, for logs and the evaluation report
        self._lock = threading.Lock()  # scrapes and the evaluation thread may read at once

    @classmethod
    def open(cls) -> GpuTelemetry:
        try:
            import pynvml
        except ImportError:
            return cls(reason="nvidia-ml-py is not installed")
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as error:
            return cls(reason=f"NVML unavailable: {error}")
        try:
            devices = [_Device(pynvml, i, handle) for i, handle in enumerate(_visible_handles(pynvml))]
        except pynvml.NVMLError as error:
            pynvml.nvmlShutdown()
            return cls(reason=f"NVML cannot list devices: {error}")
        if not devices:
            pynvml.nvmlShutdown()
            return cls(reason="no GPU visible to this process")
        return cls(pynvml, devices)

    @property
    def available(self) -> bool:
        return bool(self._devices)

    @property
    def num_devices(self) -> int:
        return len(self._devices)

    def read(self) -> list[GpuReading]:
        """One reading per visible GPU; [] when unavailable or when the driver errors mid-run."""
        if not self.available:
            return []
        with self._lock:
            try:
                return [device.read() for device in self._devices]
            except self._nvml.NVMLError:
                return []

    def energy_joules(self, index: int) -> float | None:
        """Energy GPU ``index`` used since telemetry opened; None if unknown."""
        for reading in self.read():
            if reading.index == index:
                return reading.energy_joules
        return None

    def close(self) -> None:
        if self.available:
            self._devices = []
            self._nvml.nvmlShutdown()
