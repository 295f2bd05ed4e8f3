"""The boot check: prove a real kernel's kexec loader accepts a spawn and boots it.

kunit-style, one file per step:

* ``params``  — QEMU settings as data (one record per machine flavour);
* ``hostfs``  — the host initramfs: Debian's python3.11 with the few stdlib modules it
  needs, mkspawn's own loader package, and the spawn payload whose initrd gets a
  per-run nonce probe in front;
* ``harness`` — QEMU under a deadline, serial console tee'd to a log and parsed as it
  arrives, the process group killed on every path;
* ``console`` — the parser: console lines (live or from a saved log) → stages reached,
  errno, nonce, verdict;
* ``check``   — verify the bundle, pick or build the host kernel, boot, report.
"""
