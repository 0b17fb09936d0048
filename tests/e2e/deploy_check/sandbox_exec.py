"""Runs a command under the system call restrictions of a systemd unit, without systemd.

    sandbox_exec.py UNIT -- COMMAND...

Applies what the unit's SystemCallFilter=, SystemCallErrorNumber=, SystemCallArchitectures=native,
RestrictAddressFamilies= and MemoryDenyWriteExecute= would (a seccomp filter built from
`systemd-analyze syscall-filter`'s groups, and the kernel's PR_SET_MDWE), then execs COMMAND.
Run it as the unprivileged user with the unit's capabilities (setpriv does that in
deploy_check.sh). The file-system and namespace settings are not emulated.

Needs Debian's python3-seccomp (libseccomp's bindings), so it runs on /usr/bin/python3.
"""

import ctypes
import errno
import os
import socket
import subprocess
import sys

import seccomp

unit_path, sep, *command = sys.argv[1:]
assert sep == "--" and command, __doc__

settings = {}
for raw in open(unit_path, encoding="utf-8"):
    line = raw.strip()
    if line and line[0] not in "#;[" and "=" in line:
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())


def expand(item, cache={}):
    """The system calls of a name or @group, as systemd-analyze lists them."""
    if not item.startswith("@"):
        return {item}
    if item not in cache:
        out = subprocess.run(["systemd-analyze", "syscall-filter", item], capture_output=True, text=True, check=True)
        calls = set()
        for entry in out.stdout.splitlines()[1:]:
            entry = entry.strip()
            if entry and not entry.startswith("#"):
                calls |= expand(entry)
        cache[item] = calls
    return cache[item]


# SystemCallFilter=: the first line decides allow list (no "~") or deny list; later lines add to
# or take from it, as systemd does.
filters = settings.get("SystemCallFilter", [])
if not filters or filters[0].startswith("~"):
    sys.exit("sandbox_exec: only an allow-list SystemCallFilter= is emulated")
allowed = set()
for value in filters:
    deny = value.startswith("~")
    names = set().union(*(expand(n) for n in value.lstrip("~").split()))
    allowed = allowed - names if deny else allowed | names
# systemd always permits these (systemd.exec(5), SystemCallFilter=).
allowed |= {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn"}

error = settings.get("SystemCallErrorNumber", ["EPERM"])[-1]
action = seccomp.ERRNO(getattr(errno, error)) if error != "kill" else seccomp.KILL_PROCESS
f = seccomp.SyscallFilter(defaction=action)
assert settings.get("SystemCallArchitectures", ["native"])[-1] == "native"  # the filter's default

# RestrictAddressFamilies=: socket() with another family fails with EAFNOSUPPORT.
families = settings.get("RestrictAddressFamilies", [""])[-1].split()
if families:
    allowed.discard("socket")
    codes = sorted(getattr(socket, name) for name in families)
    for code in codes:
        f.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, code))
    f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.LT, codes[0]))
    f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.GT, codes[-1]))
    for lo, hi in zip(codes, codes[1:]):
        for code in range(lo + 1, hi):
            f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, code))

for name in sorted(allowed):
    try:
        f.add_rule(seccomp.ALLOW, name)
    except (RuntimeError, ValueError, OSError):
        pass  # not a system call of this architecture

if settings.get("MemoryDenyWriteExecute", ["no"])[-1] in ("yes", "true", "1"):
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        if err != errno.EINVAL:
            sys.exit(f"sandbox_exec: PR_SET_MDWE failed ({os.strerror(err)})")
        # Kernels before 6.3 have no PR_SET_MDWE; systemd then uses a seccomp rule instead.
        # Say so on stderr (the check shows the log when it fails) and go on without it.
        print("sandbox_exec: warning: kernel without PR_SET_MDWE (6.3+); "
              "MemoryDenyWriteExecute= not emulated", file=sys.stderr)

f.load()  # sets no_new_privs too
os.execvp(command[0], command)
