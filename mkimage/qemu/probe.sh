#!/bin/sh
# mkspawn check probe: the spawn's first userspace program (rdinit=/.mkspawn/probe).
# Printing this run's nonce proves the spawn reached userspace in *this* boot; then
# the bundle's own init takes over, with the arguments the kernel gave us.
read -r nonce < /.mkspawn/nonce
read -r next < /.mkspawn/next
echo "MKSPAWN-NONCE=$nonce"
exec "$next" "$@"
