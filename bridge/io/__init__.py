"""Frame sources and sinks: one module per backend behind :mod:`bridge.io.base`."""
