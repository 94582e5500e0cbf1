"""razor-robot."""
