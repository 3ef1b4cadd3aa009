"""`edgefleetctl`, the operator's side: the entry point, the gRPC client and one module per
command group. It runs on a laptop; server code is imported only by `serve`, `init` and
the key ceremony.
"""

from edgefleet.cli_support import CommandGroup, command_help

PROG = "edgefleetctl"
# In --help's order: each group's module, the function that registers it, and its
# commands with their line in --help. A command line naming one loads that module alone.
GROUPS = (
    CommandGroup(
        "server",
        "register",
        {
            "init": "create a new controller data directory",
            "serve": "run the controller's gRPC server",
            "health": "exit 0 when a controller's plaintext health port answers SERVING",
        },
    ),
    CommandGroup(
        "keys",
        "register",
        {"keys": "the fleet's signing keys: every change is a new root version"},
    ),
    CommandGroup("devices", "register_token", {"token": "enrollment tokens"}),
    CommandGroup("models", "register_models", {"models": "the model catalog"}),
    CommandGroup("models", "register_bundle", {"bundle": "model bundles for air-gapped sites"}),
    CommandGroup(
        "models",
        "register_agent_bundle",
        {"agent-bundle": "offline install bundles of the agent for gateways"},
    ),
    CommandGroup("rollouts", "register", {"rollout": "model rollouts"}),
    CommandGroup("devices", "register_devices", {"devices": "enrolled devices"}),
    CommandGroup(
        "access",
        "register_operator",
        {"operator": "operators and their roles"},
        {"operator": ("operators",)},
    ),
    CommandGroup("access", "register_policy", {"policy": "the fleet's signed RBAC policy"}),
    CommandGroup(
        "access", "register_tokens", {"tokens": "application tokens in the signed policy"}
    ),
    CommandGroup("audit", "register", {"audit": "audit trail"}),
    CommandGroup(
        "console", "register", {"console": "the fleet in a web browser, served on this machine"}
    ),
)
HELP = command_help(GROUPS)
