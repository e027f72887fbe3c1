"""check's path-management notes (probe.explain_paths, pure): each situation that keeps a connection on
one path gets a note naming it and a hint with the command for that namespace."""

from mptcpize_py.paths import NetnsPaths, explain_paths


def ep(address, *flags):
    return {"address": address, "id": 1, "dev": "eth1", "flags": list(flags)}


def texts(notes):
    return [n.text for n in notes]


def test_subflows_zero_never_opens_a_second_subflow():
    notes = explain_paths(NetnsPaths("x", "1", "kernel", 0, 0, [ep("10.0.0.1", "subflow", "signal")]),
                          "mzc-a")
    assert texts(notes) == ["limits subflows=0: upgraded connections will never open a second subflow"]
    assert notes[0].hint == "ip -n mzc-a mptcp limits set subflows 2 add_addr_accepted 2"


def test_mptcp_disabled_says_never_upgraded_and_nothing_else():
    notes = explain_paths(NetnsPaths("x", "0", "kernel", 0, 0, []), "mzc-b")
    assert len(notes) == 1 and "never upgraded" in notes[0].text
    assert notes[0].hint == "ip netns exec mzc-b sysctl -w net.mptcp.enabled=1"


def test_userspace_path_manager_needs_mptcpd():
    notes = explain_paths(NetnsPaths("x", "1", "userspace", 2, 2, []))
    assert len(notes) == 1 and "mptcpd" in notes[0].text and notes[0].hint.startswith("run mptcpd")


def test_no_subflow_endpoint_and_no_add_addr():
    notes = explain_paths(NetnsPaths("x", "1", "kernel", 2, 0, [ep("10.0.0.1", "signal")]))
    assert len(notes) == 1
    assert notes[0].text.startswith("no endpoint with the 'subflow' flag and add_addr_accepted=0")
    assert notes[0].hint == "ip mptcp endpoint add ADDRESS dev IFACE subflow"   # the caller's netns


def test_no_subflow_endpoint_but_add_addr_accepted():
    notes = explain_paths(NetnsPaths("x", "1", "kernel", 2, 2, [ep("10.0.0.1", "signal")]))
    assert len(notes) == 1 and "only when the server announces" in notes[0].text


def test_no_signal_endpoint_on_the_server_side():
    notes = explain_paths(NetnsPaths("x", "1", "kernel", 2, 2, [ep("10.0.0.1", "subflow")]))
    assert texts(notes) == ["no endpoint with the 'signal' flag: as a server, this namespace announces "
                            "no other address; clients get a second subflow only from their own "
                            "'subflow' endpoints"]


def test_fewer_subflows_allowed_than_endpoints():
    notes = explain_paths(NetnsPaths("x", "1", "kernel", 1, 0,
                                     [ep("10.0.0.1", "subflow", "signal"), ep("10.0.1.1", "subflow")]))
    assert len(notes) == 1 and notes[0].text.startswith("limits subflows=1 but 2 'subflow' endpoints")


def test_complete_setup_has_no_notes():
    assert explain_paths(NetnsPaths("x", "1", None, 2, 2,
                                    [ep("10.0.0.1", "subflow"), ep("10.0.1.1", "signal")])) == []
