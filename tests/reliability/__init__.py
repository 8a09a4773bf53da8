"""Reliability and security tests: real faults injected into a real service (issue #5)."""
