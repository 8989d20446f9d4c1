"""Scripted Scipion workflows built on the plugin's protocols (copy them as the start of your own)."""
