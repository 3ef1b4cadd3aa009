"""The controller's audit chain and the devices' chains it stores, checkpoints and exports."""
