"""Pure cores: the algorithms, with no clock reads, locks, I/O, pydantic or telemetry.

Each module here is a set of functions over plain values. The drivers in
``resilience._async`` (and the generated ``resilience._sync``) read the clock,
take locks, talk to stores and report telemetry around them; the stores call the
same functions, and the conformance suite uses them as the oracle for the
backends that compute on a server (Redis, PostgreSQL).
"""
