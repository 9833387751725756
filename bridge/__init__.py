"""StreamBridge daemon: frame I/O, live control, presets and the process that wires them."""

__version__ = "0.1.0"
