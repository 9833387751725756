"""Two Ableton Link peers in one process: our :class:`bridge.tempo.LinkClock` and a plain
``aalink`` peer standing in for Ableton Live. Run by ``test_link.py`` inside a private network
namespace that has only the loopback interface, so Link's multicast discovery never leaves this
machine; prints one JSON line with what it measured.

``python -m tests.tempo.link_peers`` refuses to run where any interface but ``lo`` exists.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import socket
import struct
import sys
import threading
import time
from typing import Any

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sH14s", b"lo", 0, b"\0" * 14)
        flags = struct.unpack("16sH14s", fcntl.ioctl(s, SIOCGIFFLAGS, ifr))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | IFF_UP, b"\0" * 14))


class Peer:
    """A bare aalink peer on its own asyncio loop thread."""

    def __init__(self, bpm: float, quantum: float) -> None:
        import aalink

        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

        async def make() -> Any:
            link = aalink.Link(bpm)
            link.quantum = quantum
            link.enabled = True
            return link

        self.link = asyncio.run_coroutine_threadsafe(make(), self.loop).result(5)


def wait(predicate: Any, timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(0.01)
    return None


def main() -> int:
    names = [name for _, name in socket.if_nameindex()]
    if names != ["lo"]:
        print(json.dumps({"refused": f"interfaces {names}: run me in a namespace with only lo"}))
        return 2
    loopback_up()
    from bridge.tempo import LinkClock, bar_phase

    ours = LinkClock(120.0, 4)
    peer = Peer(90.0, 4.0)
    out: dict[str, Any] = {}
    out["joined_s"] = wait(lambda: ours.peers() >= 1 and peer.link.num_peers >= 1, 10.0)
    # the session's tempo: whoever joined second took the first one's
    out["tempo_after_join"] = [ours.bpm, float(peer.link.tempo)]
    peer.link.tempo = 133.0  # the DJ changes the tempo in Live
    out["follow_tempo_s"] = wait(lambda: abs(ours.bpm - 133.0) < 1e-3, 5.0)
    out["our_tempo"] = ours.bpm
    errors = []
    for _ in range(20):  # the same bar phase as the peer, read back to back
        a = bar_phase(ours.beat_at(time.monotonic()), 4)
        b = float(peer.link.phase)
        d = abs(a - b)
        errors.append(min(d, 4.0 - d))
        time.sleep(0.02)
    out["phase_error_beats"] = max(errors)
    ours.set_bpm(101.5, time.monotonic())  # /sd/tempo/bpm on our side goes to the session
    out["push_tempo_s"] = wait(lambda: abs(float(peer.link.tempo) - 101.5) < 1e-3, 5.0)
    out["peer_tempo"] = float(peer.link.tempo)
    ours.close()
    out["left_s"] = wait(lambda: peer.link.num_peers == 0, 10.0)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
