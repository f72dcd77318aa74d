"""Benchmarks: `python bench/throughput.py --help`."""

from __future__ import annotations
