"""Devices: enrollment and their lifecycle, syncs (status in, desired state out), and the
change feed that wakes their watch streams.
"""
