"""Built-in plugin: schedules (API.md section 12)."""

from __future__ import annotations

from asyncproc.registry import Registry

registry = Registry()
