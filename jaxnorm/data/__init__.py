"""Data sets. Offline: ``load_digits`` (scikit-learn's bundled handwritten digits)."""

from jaxnorm.data.digits import load_digits

__all__ = ["load_digits"]
