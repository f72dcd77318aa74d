"""Built-in plugin: triggers (API.md section 12)."""

from __future__ import annotations

from asyncproc.registry import Registry

registry = Registry()
