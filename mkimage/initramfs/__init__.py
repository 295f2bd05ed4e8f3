"""The initramfs stage: a streaming newc writer and reader, kernel-compatible
compressors, the early uncompressed segment and the userland laid out from the recipe's
``[initramfs]`` table (busybox, files, trees, ELF closures, device nodes).

Public entry point: :func:`mkimage.initramfs.build.build_initramfs`.
"""
