"""Offline training scripts that build HELIOS's own test and benchmark models."""
