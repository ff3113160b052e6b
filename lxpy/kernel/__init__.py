"""Thin synchronous kernel interfaces: syscalls, cgroups, network interfaces."""
