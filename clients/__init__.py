"""Clients of the Reverie service: a typed REST client, and the examples built on it."""
