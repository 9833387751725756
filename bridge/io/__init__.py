"""Frame sources and sinks: one module per backend behind :mod:`bridge.io.base`.

:mod:`bridge.io.registry` is the entry point (config unions, ``KIND:NAME`` specs, factories,
sender discovery). Backends: :mod:`~bridge.io.pattern`, :mod:`~bridge.io.ndi`,
:mod:`~bridge.io.spout`, :mod:`~bridge.io.syphon`, :mod:`~bridge.io.video`,
:mod:`~bridge.io.camera`, :mod:`~bridge.io.virtualcam`, :mod:`~bridge.io.null`. Platform
libraries are imported only when a backend opens. See docs/io-backends.md.
"""
