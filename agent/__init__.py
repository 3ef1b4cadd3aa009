"""edgefleet agent: the offline-first daemon on each gateway."""
