"""edgefleet controller: the fleet's control plane."""
