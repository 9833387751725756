"""Print what StreamBridge sends to a feedback target: the echo of every change, and the status.

    streambridge demo &                 # echoes to 127.0.0.1:9401 by default
    python examples/osc_watch.py        # listen there; --status also shows /sd/status/* (2 per second)
    python examples/osc_client.py       # in a third terminal: watch every change come back

    python examples/osc_watch.py 9501 --host 0.0.0.0   # another port / every interface
"""

import argparse
import time

from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import BlockingOSCUDPServer

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("port", type=int, nargs="?", default=9401, help="UDP port to listen on (default 9401)")
parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
parser.add_argument("--status", action="store_true", help="also print the periodic /sd/status/* messages")
args = parser.parse_args()


def fmt(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else repr(value)  # OSC floats are 32-bit


def show(address: str, *values: object) -> None:
    if address.startswith("/sd/status/") and not args.status:
        return
    print(f"{time.strftime('%H:%M:%S')} {address} {' '.join(fmt(v) for v in values)}", flush=True)


dispatcher = Dispatcher(strict_timing=False)  # never sleep on a bundle's time tag
dispatcher.set_default_handler(show)
server = BlockingOSCUDPServer((args.host, args.port), dispatcher)
print(f"listening for StreamBridge feedback on {args.host}:{args.port} (Ctrl-C to stop)", flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    pass
