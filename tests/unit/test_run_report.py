"""`run -v`'s report when a backend summarizes the processes beyond its row limit."""

from mptcpize_py import report
from mptcpize_py.run.backend import ProcessReport, ProcessSummary


def test_totals_count_rows_and_summaries_and_names_are_escaped():
    lines = report.run_verbose("seccomp", [ProcessReport(5, "/bin/a", 2), ProcessReport(5, "/bin/b", 1)],
                               {"upgraded": 10}, [ProcessSummary("/tmp/x\n\x1b[2J", 3, 7)])
    assert lines == ["mptcpize-py: backend seccomp: 10 socket(s) upgraded in 5 process(es)",
                     "mptcpize-py: pid=5 exe=/bin/a upgraded=2",
                     "mptcpize-py: pid=5 exe=/bin/b upgraded=1",
                     "mptcpize-py: 3 more process(es): exe=/tmp/x\\n\\x1b[2J upgraded=7"]
