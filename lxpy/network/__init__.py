"""Host networking for containers: bridges, veth pairs, network namespaces,
dnsmasq and nftables. Synchronous; the daemon calls it from worker threads."""
