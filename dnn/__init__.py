"""Measurements on real networks (PyTorch)."""
