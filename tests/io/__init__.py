"""Tests of the frame backends (bridge.io)."""
