"""The left-hand panels: data, model and method settings."""
