"""Names of the model sizes, importable without torch (for spec validation).

The sizes themselves live in ``dit.py`` (``DIT_SIZES``) and ``router.py``
(``ROUTER_SIZES``); a test checks these name lists match those dicts.
"""
DIT_SIZE_NAMES = ("DiT-XXS/2", "DiT-XXS/4", "DiT-XS/2", "DiT-XS/4", "DiT-S/2", "DiT-S/4",
                  "DiT-B/2", "DiT-B/4", "DiT-L/2", "DiT-XL/2")
ROUTER_SIZE_NAMES = ("Router-XS", "Router-S", "Router-B", "Router-XS@16", "Router-S@16")
VIDEO_DIT_SIZE_NAMES = ("VDiT-XXS/4", "VDiT-XS/2", "VDiT-S/2", "VDiT-B/2")
