"""The local signed model registry: trust state, verified blobs, installed and active versions."""
