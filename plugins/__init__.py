"""Plugins shipped with asyncproc: `demo` (the demo kinds) and optional integrations."""
