"""Data loading utilities for multitag."""
