"""The browser control page: its HTTP API (:mod:`bridge.web.api`) and its assets (``static/``).

Served by the status page's server (:mod:`bridge.status_page`) when ``status.control`` is on.
Every change from the page goes through the OSC command table's validator and the same
submission path as an OSC packet; changes from anywhere reach the page as server-sent events.
"""

from bridge.web.api import ControlApi, LiveEvents, param_table

__all__ = ["ControlApi", "LiveEvents", "param_table"]
