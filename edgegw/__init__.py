"""edgegw: shop-floor edge gateway."""

__version__ = "0.1.0"
