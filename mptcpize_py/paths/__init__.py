"""MPTCP path management: endpoints and limits per network namespace.

- facts.py: what a namespace has, for `check` (NetnsPaths, explain_paths) and `paths` (PathsReport).
- plan.py: what a [paths] table wants there and the changes that get there (pure).
- manager.py: PathManager, the daemon's (and `paths --apply`'s) manager, kept in sync by rtnetlink
  events; watch.py: the namespaces it watches; passes.py: one pass over one of them.
- others.py: mptcpd or NetworkManager managing endpoints in a namespace (we stand back there).
- state.py: which endpoints are ours (paths.json) and the one-manager lock.
- netlink.py: the only pyroute2 importer.
"""

from mptcpize_py.paths.facts import (
    Endpoint,
    NetnsPaths,
    PathManagerState,
    PathNote,
    PathsEndpoint,
    PathsReport,
    explain_paths,
    path_management,
    path_manager_state,
    paths_report,
)

__all__ = ["Endpoint", "NetnsPaths", "PathManagerState", "PathNote", "PathsEndpoint", "PathsReport",
           "explain_paths", "path_management", "path_manager_state", "paths_report"]
