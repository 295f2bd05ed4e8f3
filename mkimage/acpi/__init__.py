"""The ACPI stage: tables from [acpi] (``.asl`` compiled with iasl, or ``.aml``),
checked as the kernel's initrd table upgrade checks them and placed under
kernel/firmware/acpi/ in the initrd's early uncompressed segment."""
