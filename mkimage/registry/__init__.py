"""Moving signed bundles through OCI registries and OCI image layouts.

A bundle travels as an OCI artifact: its canonical manifest.json is the config blob and
each signature and component is a layer of its own, so bundles that share a kernel share
its blob.  ``artifact`` is the pure mapping between the two forms; ``client`` (the
distribution API over HTTP) and ``layout`` (a directory) are the stores; ``transfer``
pushes and pulls through either, and a pull only ever yields a verified bundle.
"""
