"""Scoring taggers: per-task metrics and evaluation reports (no torch)."""
