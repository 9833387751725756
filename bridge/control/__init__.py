"""OSC control: a hardened decoder (:mod:`.codec`), the command table (:mod:`.surface`), the UDP
adapter (:mod:`.server`) and feedback (:mod:`.feedback`). See docs/osc.md for the contract."""

from bridge.control.codec import DecodeError, OscBundle, OscMessage, decode_packet, encode_message
from bridge.control.feedback import FeedbackSender, parse_target
from bridge.control.server import DEFAULT_HOST, DEFAULT_PORT, OscServer, parse_allow
from bridge.control.surface import (
    Batch,
    Command,
    ControlSurface,
    DumpState,
    RecallPreset,
    Rejected,
    SavePreset,
    SetParams,
    StepPreset,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "Batch",
    "Command",
    "ControlSurface",
    "DecodeError",
    "DumpState",
    "FeedbackSender",
    "OscBundle",
    "OscMessage",
    "OscServer",
    "RecallPreset",
    "Rejected",
    "SavePreset",
    "SetParams",
    "StepPreset",
    "decode_packet",
    "encode_message",
    "parse_allow",
    "parse_target",
]
