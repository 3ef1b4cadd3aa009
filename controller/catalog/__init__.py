"""Models and releases: publishing (upload, verify, sign targets), the blob store,
quantized variants and agent install bundles.
"""
