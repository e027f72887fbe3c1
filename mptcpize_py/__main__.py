import sys

from mptcpize_py.cli import main

sys.exit(main())
