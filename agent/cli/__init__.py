"""`edgefleet-agent`: one module per command group (each registers its parsers and
handlers together); `main` puts them in order and loads only the one a command names."""

from edgefleet.cli_support import CommandGroup, command_help

PROG = "edgefleet-agent"
# In --help's order: each group's module, its register function, and its commands with
# their line in --help.
GROUPS = (
    CommandGroup(
        "enrollment",
        "register",
        {
            "enroll": "join the fleet (with a one-time token, or by approval)",
            "fingerprint": "this device's key fingerprint (for preauthorization)",
        },
    ),
    CommandGroup(
        "daemon",
        "register",
        {
            "run": "serve the local API and sync with the controller",
            "status": "identity, registry and sync state",
        },
    ),
    CommandGroup("models", "register", {"models": "the local registry"}),
    CommandGroup("chat", "register", {"chat": "talk to a model through the running agent's API"}),
    CommandGroup("tokens", "register", {"tokens": "application tokens for the local API"}),
    CommandGroup("audit", "register", {"audit": "this device's audit log"}),
    CommandGroup(
        "bench", "register", {"bench": "measure prompt and generation tokens/s of a model"}
    ),
)
HELP = command_help(GROUPS)
