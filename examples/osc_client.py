"""Drive a running StreamBridge from Python (the same messages TouchDesigner/TouchOSC send).

    streambridge demo &            # or streambridge run ...
    python examples/osc_client.py
"""

import time

from pythonosc.udp_client import SimpleUDPClient

client = SimpleUDPClient("127.0.0.1", 9400)
client.send_message("/sd/prompt", "a coral reef, bioluminescent, volumetric light")
client.send_message("/sd/strength", 0.6)
for g in (1.0, 1.5, 2.0, 1.2):
    client.send_message("/sd/guidance", g)
    time.sleep(0.5)
client.send_message("/sd/seed/b", 4242)  # seed crossfader: travel through noise space
for k in range(11):
    client.send_message("/sd/seed/mix", k / 10)
    time.sleep(0.1)
client.send_message("/sd/smoothing", 0.5)  # steadier frame to frame
client.send_message("/sd/transition", 2.0)  # the next recall morphs over 2 s
client.send_message("/sd/preset", "ink-wash")
time.sleep(2.5)
client.send_message("/sd/preset/next", [])
client.send_message("/sd/state", [])  # every value goes to the feedback targets
