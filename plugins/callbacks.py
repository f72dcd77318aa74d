"""Built-in plugin: state-change messages on the callback exchange (API.md section 7).

On when `callback_exchange` is set: a lifespan hook connects the publisher and adds
it to the node's after-change hooks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from asyncproc.hooks import Node
from asyncproc.registry import Registry, optional_backend

registry = Registry()


@registry.lifespan
@asynccontextmanager
async def callbacks(node: Node) -> AsyncIterator[None]:
    """Publish every told change of this node while it runs."""
    if not node.settings.callback_exchange:
        yield
        return
    module = optional_backend("asyncproc.backends.callbacks", "callback_exchange", "rabbitmq")
    publisher = module.CallbackPublisher.from_settings(node.settings)
    hooks = node.service.hooks
    # The shapes plugins give their kinds' messages, looked up as each change is told.
    publisher.shapes = hooks.callback_shapes
    async with publisher.running():
        hooks.after_change.append(publisher)
        try:
            yield
        finally:
            hooks.after_change.remove(publisher)
