"""Foundations every layer may use: file I/O, progress, threads, parameters, locks, integrity."""
