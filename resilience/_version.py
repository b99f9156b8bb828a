"""The package version, in a module of its own so that any module can import it."""

VERSION = "0.1.0"
