"""Scipion viewers of the nonuniform plugin (each one imported here for discovery)."""
