"""Building template rootfs trees from their definitions."""
