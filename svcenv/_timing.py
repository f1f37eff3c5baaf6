"""How long each phase of one service's start took."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServiceTiming"]


@dataclass(frozen=True)
class ServiceTiming:
    """When one service went through each phase, in seconds since ``start()`` began."""

    service: str
    backend: str
    begin: float
    """Dependencies ready; creation begins."""
    created: float
    """Container/process created."""
    started: float
    """Container/process started."""
    ready: float
    """The readiness probe passed."""
    attempts: int
    """Probe attempts it took."""

    @property
    def create_s(self) -> float:
        return self.created - self.begin

    @property
    def start_s(self) -> float:
        return self.started - self.created

    @property
    def ready_s(self) -> float:
        """From started to ready: the time the probe waited."""
        return self.ready - self.started

    @property
    def total_s(self) -> float:
        return self.ready - self.begin
