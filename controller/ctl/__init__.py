"""`edgefleetctl`, the operator's side: the entry point, the gRPC client and one module per
command group. It runs on a laptop; server code is imported only by `serve`, `init` and
the key ceremony.
"""
