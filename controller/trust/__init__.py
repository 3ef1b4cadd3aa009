"""The fleet's keys and signed metadata: the keyring, the root-key ceremony, timestamp
snapshots and the certificate authority.
"""
