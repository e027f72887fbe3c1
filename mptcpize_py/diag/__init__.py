"""Socket diagnostics: the sock_diag codec, MPTCP_INFO, the connection view."""
