"""The devicetree stage: per-ABI-profile instance trees and pool baselines for a
multikernel host, compiled with dtc, and the pure-Python FDT codec (``fdt.py``) that the
handover stage shares."""
