"""Backends: `memory` (StateStore + Queue), `redis` (StateStore), `rabbitmq` (Queue)."""
