"""Keys, signed envelopes, role metadata and the pure verifier state machine."""
