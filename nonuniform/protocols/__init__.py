"""Scipion protocols of the nonuniform plugin (each one imported here for discovery)."""
