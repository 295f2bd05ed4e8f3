"""Thin click commands, one module per verb family; registered by mkimage.cli."""
