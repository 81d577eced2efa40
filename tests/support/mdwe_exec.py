"""Run a command under MemoryDenyWriteExecute: ``python mdwe_exec.py COMMAND ARGS...``.

prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN) is the kernel mechanism systemd uses for
``MemoryDenyWriteExecute=yes`` (Linux 6.3+); it survives execve. Exit 70 when the kernel
refuses it, so that a test cannot pass without the protection in force.
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1

if __name__ == "__main__":
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        print(f"mdwe_exec: prctl(PR_SET_MDWE) failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        sys.exit(70)
    os.execvp(sys.argv[1], sys.argv[1:])
