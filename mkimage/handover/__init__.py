"""The handover stage: the FDT (compatible "mkspawn,handover-v2", big-endian) carrying
the bundle's image digests, the instance's identity and resources, the spawn cmdline, the
ABI profile and preserved-memory requests; the instance overlay carries the same tree,
without the digests, to the spawn's /chosen.  Binding: docs/handover-binding.md."""
