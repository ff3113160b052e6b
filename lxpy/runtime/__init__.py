"""Running containers: the launch path, the monitor, its control protocol, the zygote."""
