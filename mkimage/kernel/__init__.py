"""Kernel images as read-only inputs: header decoders and the loader-contract checks.

``setup_header`` (x86 bzImage), ``arm64_image`` (arm64 ``Image``) and ``elfnote``
(ELF vmlinux and its multikernel note) decode bytes into records.  ``contract`` checks
an image against what the kernel's kexec loader for an ABI profile will accept, and
``release`` reads the kernel release and embedded ``.config`` back out of an image.
"""
