"""Model definitions: one architecture family per module."""
