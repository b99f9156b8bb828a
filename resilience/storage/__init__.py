"""Storage backends: where policies keep state that several callers share.

Each policy defines its own narrow storage protocol next to its memory
implementation (``resilience.storage.breakers`` for the circuit breaker).
"""
