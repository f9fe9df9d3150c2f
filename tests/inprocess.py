"""`subdomaind ARGS` run by its `main` in the test process, as the installed command runs it.

Starting Python with the CLI's imports costs about half a second of CPU a call; the tests that check what a
command says run it here, and a few (test_office_ready.py) run the installed command as a process. What a
command changes in the environment is put back (outside systemd, a bare secret name sets
CREDENTIALS_DIRECTORY beside the configuration); the root logging handler it sets up is removed after each
test by tests/conftest.py, as for every test that calls `main` itself.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from unittest import mock

from subdomaind.daemon.cli import main


def run_main(*args: str) -> subprocess.CompletedProcess[bytes]:
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse and the start's refusals exit as the process would
            code = exit_.code if isinstance(exit_.code, int) else 1
    return subprocess.CompletedProcess(["subdomaind", *args], code, out.getvalue().encode(), err.getvalue().encode())
