"""The handover stage: a KHO-style FDT (compatible "mkspawn,handover-v1") carrying the
bundle's image digests, the instance's resources, the spawn cmdline, the ABI profile and
preserved-memory requests; binding in docs/handover-binding.md."""
