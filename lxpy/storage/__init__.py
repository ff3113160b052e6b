"""Storage backends: btrfs subvolumes, or plain directories."""
