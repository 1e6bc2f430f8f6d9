"""The one error type for bad client input, on every side of the wire.

Raised wherever input is checked (a REST body, a gRPC Tensor that does not decode, an observation,
a fragment); each front end turns it into its own refusal (422, INVALID_ARGUMENT) that names the field.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad client input: `field` names where (e.g. `observations[3][1]`), `message` says what."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
