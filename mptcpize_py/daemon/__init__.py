"""The daemon: service loop, records, control socket (server, protocol, client)."""
