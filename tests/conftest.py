"""Shared pytest configuration: the hypothesis profile comes from ``HYPOTHESIS_PROFILE``."""

from tests.strategies import load_profile

load_profile()
