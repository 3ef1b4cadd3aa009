"""`edgefleet-agent`: one module per command group (each registers its parsers and
handlers together); `main` puts them in order."""

PROG = "edgefleet-agent"
