"""The controller's gRPC edge: server, servicers, authorization and error mapping."""
