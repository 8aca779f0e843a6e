"""Shared test configuration: hypothesis without deadlines (numba compiles on first call)."""

from hypothesis import HealthCheck, settings

settings.register_profile("valleysim", deadline=None, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("valleysim")
