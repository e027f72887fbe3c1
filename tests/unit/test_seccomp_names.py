"""What the seccomp backend shows of itself and takes from its callers, checked without a kernel."""

from mptcpize_py.run.seccomp.backend import DETACHED_NAME
from mptcpize_py.run.seccomp.caller import Creds
from tests.conftest import REPO


def test_detached_supervisor_name_fits_comm_and_is_documented():
    # The kernel keeps 15 bytes of a comm: a longer name is never matched by `pgrep -x NAME`.
    assert len(DETACHED_NAME.encode()) <= 15
    assert f"pgrep -x {DETACHED_NAME}" in (REPO / "README.md").read_text()
    assert f"pgrep \\-x {DETACHED_NAME.replace('-', chr(92) + '-')}" in \
        (REPO / "docs" / "mptcpize-py.8").read_text()


def test_holds_looks_at_every_id_a_socket_takes():
    creds = Creds(tgid=1, euid=5, fsuid=6, egid=7, fsgid=8, groups=(9, 10), cap_eff=0, cap_prm=0,
                  cap_inh=0)
    assert not creds.holds(65534, 65534)
    for uid in (5, 6):
        assert creds.holds(uid, 65534)
    for gid in (7, 8, 9, 10):
        assert creds.holds(65534, gid)
