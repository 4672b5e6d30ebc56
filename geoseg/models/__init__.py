"""Segmentation models: spectral-index models (no training) and deep models (torch)."""
