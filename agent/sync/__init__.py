"""Sync with the controller over gRPC/mTLS: status, desired state, blobs, audit."""
