"""Fakes of platform libraries, following their documented APIs, for contract tests."""
