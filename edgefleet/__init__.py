"""edgefleet shared kernel: what the agent and the controller must compute the same way."""

__version__ = "0.1.0"
