"""examples stage."""
