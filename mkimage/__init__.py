"""mkspawn: build, sign, verify and check boot bundles for multikernel spawns."""

__version__ = "0.1.0"
