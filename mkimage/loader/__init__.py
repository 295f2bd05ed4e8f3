"""mkspawn's kexec loader: standard library only, syscalls through ctypes.

The same code runs in two places: inside the QEMU check's host initramfs (where Debian's
python3.11 and a handful of stdlib modules are all there is) and on an operator's host
through ``mkspawn load``.  Hence the rules for this package:

* import nothing outside the standard library, and only the small part of it the
  check's host initramfs carries (os, sys, errno, struct, time, ctypes and what the
  interpreter needs to start) — no enum, dataclasses, argparse, re or pathlib;
* no printing except in ``__main__`` (the guest/operator entry point, which prints the
  console markers the QEMU harness parses);
* failures are ``LoaderError`` carrying the errno, its name and what it means for a
  kexec load.

Modules: ``errnos`` (errno → meaning), ``syscalls`` (kexec_file_load, reboot, mount),
``kexec`` (plain kexec mode), ``multikernel`` (the multikernel protocol, per ABI
profile), ``__main__`` (markers and argument handling).
"""
