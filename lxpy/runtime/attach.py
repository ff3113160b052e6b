"""Entering a running container: the child the monitor forks for `exec`.

The monitor forks this child with its pid namespace for children set to the
container's, so the child is a process of the container (`ps` inside shows
it) while the monitor, outside, stays its parent and reaper. The child then
joins the container's cgroups and its other namespaces, takes the
container's root, drops what init dropped, switches to the user, sets up
its stdio (pipes the daemon made, or a pty of the container's own devpts)
and execs the command with a clean environment.

A failure before the exec is written to `errfd` as a JSON error object
(close-on-exec: a successful exec reads as EOF) and the child exits 1. A command that cannot
be exec'd is reported the way shells do: a line on its stderr and exit
status 127 (not found) or 126 (not executable).

Stdlib plus lxpy.kernel's syscalls, caps, seccomp and apparmor only: the monitor imports
this module.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import struct
import termios

# Imported here, not where it is used: os.execvpe (os.get_exec_path) imports
# it, inside the container's root by then, where no Python library is.
import warnings  # noqa: F401
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lxpy.errors import InvalidArgument, LxpyError, NotFound
from lxpy.kernel import apparmor, caps, seccomp
from lxpy.kernel import syscalls as sc
from lxpy.kernel.inroot import Rootfs, RootfsError

# For annotations only: typing costs the zygote, and so every monitor it
# forks, ~0.5 MB.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Namespaces entered by setns(), in this order. The mount namespace comes
# last: once in it, /proc is the container's and the paths below no longer
# name the host's view of init. (The pid namespace is entered by the
# monitor before the fork: only children of a setns(CLONE_NEWPID) caller
# land in it.)
_NAMESPACES = (
    ("cgroup", sc.CLONE_NEWCGROUP),
    ("ipc", sc.CLONE_NEWIPC),
    ("uts", sc.CLONE_NEWUTS),
    ("net", sc.CLONE_NEWNET),
    ("mnt", sc.CLONE_NEWNS),
)

# asm-generic ioctl numbers (x86, arm, riscv, s390): termios lacks them.
_TIOCSPTLCK = 0x40045431  # unlockpt(): unlock the slave of a new master
_TIOCGPTPEER = 0x5441  # open the slave of a master without a path lookup


@dataclass(frozen=True)
class ExecSpec:
    """What to run in the container (the body of POST .../exec)."""

    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    # "" means the user's home directory (or / when it does not exist).
    cwd: str = ""
    # A name or a uid, looked up in the container's /etc/passwd; "" is root.
    user: str = ""
    tty: bool = False
    width: int = 80
    height: int = 24

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> ExecSpec:
        """Validate an exec request.

        Raises:
            InvalidArgument: naming the bad field.
        """
        cmd = data.get("command")
        if (
            not isinstance(cmd, list | tuple)
            or not cmd
            or not all(isinstance(a, str) and "\0" not in a for a in cmd)
            or not cmd[0]
        ):
            raise InvalidArgument(
                "exec: command must be a non-empty list of strings",
                hint='e.g. {"command": ["sh", "-c", "echo hi"]}',
            )
        env = data.get("env") or {}
        if not isinstance(env, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
            for k, v in env.items()
        ):
            raise InvalidArgument(
                "exec: env must map variable names (without '=') to strings",
                hint='e.g. {"env": {"LANG": "C.UTF-8"}}',
            )
        cwd = data.get("cwd") or ""
        if not isinstance(cwd, str) or (cwd and not cwd.startswith("/")) or "\0" in cwd:
            raise InvalidArgument(f"exec: cwd must be an absolute path, got {cwd!r}")
        user = data.get("user")
        if user is None:
            user = ""
        if isinstance(user, int) and not isinstance(user, bool) and user >= 0:
            user = str(user)
        if not isinstance(user, str) or ":" in user or "\0" in user:
            raise InvalidArgument(f"exec: user must be a user name or uid, got {user!r}")
        tty = data.get("tty", False)
        if not isinstance(tty, bool):
            raise InvalidArgument(f"exec: tty must be true or false, got {tty!r}")
        size = []
        for key, default in (("width", 80), ("height", 24)):
            value = data.get(key)
            value = default if value is None else value
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
                raise InvalidArgument(f"exec: {key} must be 1..65535, got {value!r}")
            size.append(value)
        return cls(tuple(cmd), dict(env), cwd, user, tty, size[0], size[1])

    def to_json(self) -> dict[str, object]:
        return {
            "command": list(self.command),
            "env": dict(self.env),
            "cwd": self.cwd,
            "user": self.user,
            "tty": self.tty,
            "width": self.width,
            "height": self.height,
        }


@dataclass(frozen=True)
class User:
    """A user as the container's /etc/passwd and /etc/group define it."""

    name: str
    uid: int
    gid: int
    home: str
    groups: tuple[int, ...]


def lookup_user(user: str, passwd: str, group: str) -> User:
    """Resolve `user` (a name or a uid; "" for root) in the text of passwd and group files.

    A uid with no passwd entry is allowed (as in `docker exec -u`): its
    group is the same number and its home is /.

    Raises:
        NotFound: for a name that the passwd file does not have.
        InvalidArgument: for a malformed entry.
    """
    wanted = user or "0"
    found: list[str] | None = None
    for line in passwd.splitlines():
        f = line.split(":")
        if len(f) < 7 or line.startswith("#"):
            continue
        if f[0] == wanted or (wanted.isdigit() and f[2] == wanted):
            found = f
            break
    if found is None:
        if not wanted.isdigit():
            raise NotFound(
                f"user {user!r} does not exist in the container",
                hint="see the container's /etc/passwd, or give a numeric uid",
            )
        uid = int(wanted)
        return User(str(uid), uid, uid, "/", (uid,))
    try:
        uid, gid = int(found[2]), int(found[3])
    except ValueError:
        raise InvalidArgument(
            f"user {user!r} has a malformed entry in the container's /etc/passwd"
        ) from None
    groups = [gid]
    for line in group.splitlines():
        f = line.split(":")
        if len(f) >= 4 and found[0] in f[3].split(","):
            try:
                groups.append(int(f[2]))
            except ValueError:
                continue
    return User(found[0], uid, gid, found[5] or "/", tuple(dict.fromkeys(groups)))


def environment(spec: ExecSpec, user: User) -> dict[str, str]:
    """The command's environment: a clean one, then the request's variables."""
    env = {
        "PATH": PATH,
        "HOME": user.home,
        "USER": user.name,
        "LOGNAME": user.name,
        "container": "lxpy",
    }
    if spec.tty:
        env["TERM"] = "xterm"
    env.update(spec.env)
    return env


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128+signal."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 255


_STEP = ["start"]


def child_main(
    init_pid: int,
    spec: ExecSpec,
    fds: Sequence[int],
    cgroup_procs: Sequence[str],
    drop_caps: Sequence[int],
    errfd: int,
    policy: seccomp.Policy | None = None,
    no_new_privs: bool = False,
    apparmor_profile: str = "",
) -> NoReturn:
    """Enter the container of `init_pid` and exec `spec.command`; never returns.

    Args:
        init_pid: the container's init (host pid namespace).
        spec: what to run.
        fds: stdin, stdout and stderr (pipes), or with a tty one unix
            socket on which the pty master is sent back.
        cgroup_procs: the container's cgroup.procs files.
        drop_caps: capability numbers to drop from the bounding set.
        errfd: write end of the monitor's error pipe (close-on-exec).
        policy: the container's syscall filter, installed before the
            command runs (as for init).
        no_new_privs: set no_new_privs with it.
        apparmor_profile: the AppArmor profile to exec the command under
            (as init), or "".
    """
    try:
        if apparmor_profile:
            _STEP[0] = "setting the AppArmor profile"
            apparmor.exec_under(apparmor_profile)
        env = _enter(init_pid, spec, fds, cgroup_procs, drop_caps, policy, no_new_privs)
    except BaseException as e:  # noqa: B036 - anything must reach the monitor
        if isinstance(e, LxpyError):
            err = e
        elif isinstance(e, OSError):
            err = LxpyError(f"exec: {_STEP[0]}: {e.strerror or e}")
        else:
            err = LxpyError(f"exec: {_STEP[0]}: {type(e).__name__}: {e}")
        try:
            os.write(errfd, json.dumps(err.to_json()).encode()[:8000])
        except OSError:
            pass
        os._exit(1)
    try:
        os.execvpe(spec.command[0], list(spec.command), env)
    except OSError as e:
        code = 127 if e.errno in (errno.ENOENT, errno.ENOTDIR) else 126
        what = "command not found" if code == 127 else e.strerror
        try:
            os.write(2, f"lxpy exec: {spec.command[0]}: {what}\n".encode(errors="replace"))
        except OSError:
            pass
        os._exit(code)
    os._exit(127)


def _enter(
    init_pid: int,
    spec: ExecSpec,
    fds: Sequence[int],
    cgroup_procs: Sequence[str],
    drop_caps: Sequence[int],
    policy: seccomp.Policy | None = None,
    no_new_privs: bool = False,
) -> dict[str, str]:
    # The monitor ignores some signals and has a wakeup fd; the command
    # must start with default dispositions, as a login shell would.
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGHUP, signal.SIGPIPE, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)

    _STEP[0] = "joining the cgroups"
    # Before the cgroup namespace: joined after, the paths would be the
    # container's view. Joined first, the limits and the freezer apply to
    # the command and a stop's cgroup kill reaches it.
    _join_cgroups(cgroup_procs, init_pid)

    _STEP[0] = "opening the namespaces"
    # Opened before any setns: in the container's mount namespace, /proc
    # is the container's and init's host pid means nothing.
    proc = f"/proc/{init_pid}"
    wanted = list(_NAMESPACES)
    if os.stat(f"{proc}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino:
        # A container with a user namespace of its own: join it first, and
        # the namespaces it owns then let us in with the caps we get in it.
        wanted.insert(0, ("user", sc.CLONE_NEWUSER))
    ns_fds = [os.open(f"{proc}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC) for ns, _t in wanted]
    root = os.open(f"{proc}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    for fd, (name, nstype) in zip(ns_fds, wanted, strict=True):
        _STEP[0] = f"entering the {name} namespace"
        sc.setns(fd, nstype)
        os.close(fd)
    # Why chroot after setns(mnt): the root set by setns is the namespace's
    # first mount, not necessarily what init pivoted into; init's own root,
    # taken through /proc, is what the container sees as /. After this
    # nothing of the host's tree is reachable.
    _STEP[0] = "taking the container's root"
    os.fchdir(root)
    os.chroot(".")
    os.chdir("/")
    os.close(root)

    _STEP[0] = "dropping capabilities"
    for cap in drop_caps:
        sc.prctl(sc.PR_CAPBSET_DROP, cap)
    caps.clear_inheritable_and_ambient()

    _STEP[0] = "looking up the user"
    user = lookup_user(spec.user, _read_text("/etc/passwd"), _read_text("/etc/group"))
    if spec.cwd and not os.path.isdir(spec.cwd):
        raise NotFound(
            f"working directory {spec.cwd!r} does not exist in the container",
            hint="give an existing directory with --cwd",
        )

    _STEP[0] = "setting up the terminal" if spec.tty else "setting up stdio"
    # A session of its own: the command is not in the monitor's session,
    # and with a tty it gets it as its controlling terminal (job control,
    # ^C, SIGHUP when the daemon hangs up).
    os.setsid()
    if spec.tty:
        slave = _open_pty(fds[0], spec, user)
        stdio: Sequence[int] = (slave, slave, slave)
    else:
        stdio = fds
    for i, fd in enumerate(stdio):
        os.dup2(fd, i)
    for fd in set(stdio) | set(fds):
        if fd > 2:
            os.close(fd)

    if policy is not None:
        # While still root: installing a filter without no_new_privs needs
        # CAP_SYS_ADMIN (in the container's user namespace, for an
        # unprivileged one), which the user switch below gives up.
        _STEP[0] = "installing the syscall filter"
        seccomp.apply(policy, no_new_privs=no_new_privs)

    _STEP[0] = f"switching to user {user.name}"
    os.setgroups(list(user.groups))
    os.setgid(user.gid)
    os.setuid(user.uid)

    _STEP[0] = "changing directory"
    # As the user: a directory the user cannot enter is an error when asked
    # for, and means / when it is only the default (a home not made yet).
    if spec.cwd:
        try:
            os.chdir(spec.cwd)
        except OSError as e:
            raise LxpyError(
                f"cannot enter {spec.cwd!r} as {user.name}: {e.strerror}",
                hint="check the directory's permissions, or pick another with --cwd",
            ) from None
    else:
        try:
            os.chdir(user.home)
        except OSError:
            os.chdir("/")
    return environment(spec, user)


def _read_text(path: str) -> str:
    # The container's file, read in its root (after chroot): a FIFO, a
    # device node or a huge file there must not hang or swamp this
    # process. Such a file reads as absent: root and numeric users still
    # work, so the container can be repaired through exec.
    with Rootfs("/", "the container", cross_mounts=True) as root:
        try:
            return root.read_text(path) or ""
        except RootfsError:
            return ""


def _join_cgroups(procs_files: Sequence[str], init_pid: int) -> None:
    gone: OSError | None = None
    joined = 0
    for path in procs_files:
        try:
            sc.write_file(path, "0")
            joined += 1
        except FileNotFoundError as e:
            # A hierarchy unmounted since the container started (a named
            # one an admin or a tool mounted for a while): a cgroup with
            # processes in it cannot be removed, so a missing one means its
            # hierarchy is gone from view, and holds nothing to join.
            gone = e
        except OSError as e:
            # cgroup v2's "no internal processes": when systemd in the
            # container enabled controllers below its root, the root takes no
            # processes. Init's own cgroup (init.scope) does.
            if e.errno != errno.EBUSY:
                raise
            sc.write_file(_init_cgroup(path, init_pid), "0")
            joined += 1
    if gone is not None and not joined:
        raise gone  # none left at all: the container's cgroups are gone


def _init_cgroup(procs_file: str, init_pid: int) -> str:
    base = os.path.dirname(procs_file)
    name = "/" + os.path.basename(base)
    with open(f"/proc/{init_pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::") and name in line:
                rest = line.rstrip("\n").split(name, 1)[1]
                return os.path.join(base + rest, "cgroup.procs")
    raise LxpyError(f"exec: cannot find init's cgroup below {base}")


def _open_pty(sock_fd: int, spec: ExecSpec, user: User) -> int:
    # The pty comes from the container's own devpts instance (its /dev/ptmx),
    # so `tty` inside names /dev/pts/N as the container sees it.
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
    slave = fcntl.ioctl(master, _TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", spec.height, spec.width, 0, 0))
    if user.uid != 0:
        # As login does: the user owns their terminal (mesg, chmod, ssh-agent).
        os.fchown(slave, user.uid, -1)
    sock = socket.socket(fileno=os.dup(sock_fd))
    try:
        socket.send_fds(sock, [b"pty\n"], [master])
    finally:
        sock.close()
    os.close(master)
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    return slave
