"""The per-container monitor: parent of init, holder of the console.

One monitor runs per running container, in its own session, so it outlives
whoever started it (lxpyd, the zygote, a shell). It:

* creates the container's cgroups and the console and tty ptys (it keeps
  the masters; console output goes to a ring buffer and a log file);
* forks init into a new pid namespace (see launch.py) and reaps it through
  a pidfd, so it knows why init ended: in a pid namespace, reboot(2)
  kills init with SIGHUP for a reboot and with SIGINT for a halt or power
  off. A reboot relaunches the container with the same spec;
* answers a unix control socket with one JSON object per line (see
  control.py for the commands);
* when init ends for good, kills what is left in the cgroups, removes
  them and the socket, writes its last state, and exits.

Stdlib only, single-threaded, one poll() loop: it must cost little memory
when fifty containers idle. Once init runs it marks its memory mergeable,
so ksmd can keep one copy of the pages all monitors write alike
(lxpy.kernel.ksm).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys
import termios
import time
from collections.abc import Callable
from dataclasses import replace

from lxpy.errors import Busy, InvalidArgument, LxpyError
from lxpy.kernel import devices, hostlimits, ksm, mounts, namespaces, pages, seccomp, systemd
from lxpy.kernel import syscalls as sc
from lxpy.kernel.cgroups import (
    MONITOR_LEAF,
    ContainerCgroup,
    Hierarchy,
    delegate_cgroups,
    hierarchies,
    hierarchy_ids,
)
from lxpy.kernel.idranges import IdMap
from lxpy.kernel.limits import apply_limits, apply_process_limit
from lxpy.model.limits import Limits
from lxpy.runtime import attach, launch, readiness
from lxpy.runtime.spec import CAPS, LaunchSpec

# For annotations only (see launch.py): typing costs every monitor memory.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

LAUNCH_TIMEOUT = 30.0
# The namespaces an unprivileged init-to-be is cloned into; the cgroup
# namespace it makes itself, once it is in the container's cgroups.
_CLONED_NS = (
    sc.CLONE_NEWUSER
    | sc.CLONE_NEWNET
    | sc.CLONE_NEWPID
    | sc.CLONE_NEWNS
    | sc.CLONE_NEWUTS
    | sc.CLONE_NEWIPC
)
_READ = select.POLLIN | select.POLLPRI
_ERR = select.POLLERR | select.POLLHUP | select.POLLNVAL


class _Client:
    __slots__ = ("sock", "buf", "subscribed", "attached", "fds", "exec")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.subscribed = False
        self.attached = False
        # Descriptors received with the request (SCM_RIGHTS), for `exec`.
        self.fds: list[int] = []
        self.exec: _Exec | None = None


class _Exec:
    """A command run by `exec`: our child, in the container's pid namespace."""

    __slots__ = ("client", "pid", "pidfd", "errfd", "err", "started")

    def __init__(self, client: _Client, pid: int, pidfd: int, errfd: int) -> None:
        self.client: _Client | None = client
        self.pid = pid
        self.pidfd = pidfd
        self.errfd = errfd
        self.err = b""
        self.started = False


def _error(e: LxpyError) -> dict[str, object]:
    return {"ok": False, "error": e.to_json()}


# The host's cgroup hierarchies as the zygote a monitor is forked from read
# them, with the hierarchy_ids() of then (lxpy.runtime.zygote); None: read
# them at start.
HIERARCHIES: tuple[tuple[str, ...], list[Hierarchy]] | None = None

# Set in a monitor that was its zygote's spare: where to save the pages its
# start wrote, how many the spare had copied in, and the zygote's pid.
LEARN: tuple[str, int, int] | None = None


def _hierarchies() -> list[Hierarchy]:
    """The host's cgroup hierarchies: the zygote's reading while the kernel
    has the same ones, else the mount table's, read now.

    Why: the mount table grows with every container (each pins its
    namespaces with a bind mount). Parsing it in every monitor costs each
    start CPU, and leaves garbage that differs from one monitor to the
    next: private memory that ksmd cannot fold.
    """
    if (
        HIERARCHIES is not None
        and HIERARCHIES[0] == hierarchy_ids()
        # A hierarchy unmounted since keeps its ID while the kernel frees
        # it, which can take a while: its mountpoint then holds no
        # cgroup.procs.
        and all(os.path.exists(os.path.join(h.mountpoint, "cgroup.procs")) for h in HIERARCHIES[1])
    ):
        return HIERARCHIES[1]
    return hierarchies()


class Monitor:
    """Runs one container until it ends for good. See the module docstring."""

    def __init__(self, spec: LaunchSpec) -> None:
        self.spec = spec
        self.cg = ContainerCgroup.for_name(spec.name, _hierarchies(), parent=spec.cgroup_parent)
        self.state = "STARTING"
        self.init_pid = 0
        self.pidfd = -1
        self.started_at = 0.0
        self.boots = 0
        self.last_exit: dict[str, object] | None = None
        # Whether this boot's init said it has booted (lxpy.runtime.readiness),
        # and the two ways it may say so.
        self.ready = False
        self.notify: socket.socket | None = None
        self.ready_fifo = -1
        self.clients: dict[int, _Client] = {}
        # exec children by pidfd. They are reaped by pid, never by
        # waitpid(-1), so init's status cannot be taken by mistake.
        self.execs: dict[int, _Exec] = {}
        self.stop_waiters: list[_Client] = []
        self.stop_deadline: float | None = None
        self.stop_forced = False
        self.stopping = False
        self.pending_signal: int | None = None
        self.pending_until = 0.0
        self.pending_next = 0.0
        self.ring = bytearray()
        self.log_fd = -1
        # Console bytes the log could not take (a full pool), not yet noted.
        self.log_lost = 0
        self.console_master = -1
        self.console_slave = -1
        self.console_path = ""
        self.tty_masters: list[int] = []
        self.tty_slaves: list[int] = []
        self.tty_paths: list[str] = []
        self.listener: socket.socket | None = None
        self.poll = select.poll()
        self.handlers: dict[int, Callable[[int], None]] = {}
        self.done = False
        self._pidns_fd = -1
        self._wake_r = self._wake_w = -1
        # Set once the cgroups are ours: a start refused because another run
        # holds them must not kill that run on its way out.
        self._owns_cgroup = False
        # Work for the serve loop once the time comes (run()).
        self.later: list[Callable[[], None]] = []
        self.later_at = 0.0

    # -- set-up ---------------------------------------------------------

    def start(self) -> None:
        """Everything up to a running init. On failure, undoes what it did.

        Raises:
            LxpyError: why the container could not start.
        """
        try:
            self._signals()
            self._listen()
            if self.spec.scope:
                self._enter_scope()
            fresh = self.cg.create(devices.init_parent)
            self._owns_cgroup = True
            self._apply_limits(fresh)
            if not devices.restrict(self.cg) and self.spec.privileged:
                # No device allow-list (neither the v1 controller nor a
                # BPF program) to stop a privileged root from opening a
                # disk node it makes: it may make none.
                self.spec = replace(self.spec, drop_caps=(*self.spec.drop_caps, "mknod"))
            self._make_ptys()
            if not self.spec.privileged:
                self._hand_over()
            if self.spec.console_log:
                self.log_fd = os.open(
                    self.spec.console_log,
                    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                    0o640,
                )
            self._launch()
        except BaseException:
            self._cleanup()
            raise

    def _enter_scope(self) -> None:
        # Out of lxpyd's unit into the container's own scope, so that
        # lxpy.service stopping or restarting leaves nothing of it behind.
        systemd.start_scope(self.spec.scope, os.getpid(), systemd.describe(self.spec.name))
        # A cgroup2 cgroup holding processes cannot pass controllers on to
        # its children: the monitor takes a leaf of its own beside the
        # container's, and the scope's cgroup stays empty.
        if self.cg.unified:
            scope = os.path.dirname(self.cg.unified)
            leaf = os.path.join(scope, MONITOR_LEAF)
            os.makedirs(leaf, exist_ok=True)
            sc.write_file(os.path.join(leaf, "cgroup.procs"), "0")
            # Accounting from the start, limits or not: what `lxpy info`
            # and `top` show reads these controllers' files.
            with open(os.path.join(scope, "cgroup.controllers")) as f:
                have = f.read().split()
            wanted = " ".join(f"+{c}" for c in ("cpu", "io", "memory", "pids") if c in have)
            if wanted:
                sc.write_file(os.path.join(scope, "cgroup.subtree_control"), wanted)

    def _apply_limits(self, fresh: bool) -> None:
        # Before init exists, so nothing in the container ever runs without
        # its limits. New cgroups hold the kernel's defaults, which mean "no
        # limit": with none set but the process limit (every container has
        # one, by default) only that is written. A reused leftover may still
        # hold an earlier run's limits: all are written then.
        limits = Limits.from_config(self.spec.limits)
        if self.spec.cpus and limits.cpu_set is None:
            limits = replace(limits, cpu_set=self.spec.cpus)
        if fresh and replace(limits, processes=None, processes_default=False) == Limits():
            apply_process_limit(self.cg, limits)
            return
        apply_limits(self.cg, limits)

    def _signals(self) -> None:
        # Outlive the terminal and peers that hang up; a SIGTERM to the
        # monitor is a request to stop the container cleanly.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Default, not ignored: an ignored SIGCHLD would auto-reap init and
        # lose its exit status.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, lambda *_: None)
        self._watch(self._wake_r, self._on_signal)

    def _listen(self) -> None:
        path = self.spec.control_socket
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # stale: its monitor is gone
            else:
                raise Busy(
                    f"a monitor already answers on {path}",
                    hint=f"container {self.spec.name!r} is probably running",
                )
            finally:
                probe.close()
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
        self.listener = sock
        self._watch(sock.fileno(), self._on_accept)

    def _make_pty(self) -> tuple[int, int, str]:
        master, slave = os.openpty()
        # A console with 0x0 size confuses getty and full-screen programs.
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        os.set_blocking(master, False)
        return master, slave, os.ttyname(slave)

    def _make_ptys(self) -> None:
        # The monitor keeps the slaves open too: the ptys then survive init's
        # death (a reboot), and reading the master never hits EIO.
        self.console_master, self.console_slave, self.console_path = self._make_pty()
        for _ in range(self.spec.ttys):
            m, s, p = self._make_pty()
            self.tty_masters.append(m)
            self.tty_slaves.append(s)
            self.tty_paths.append(p)
        self._watch(self.console_master, self._on_console)

    @staticmethod
    def _reopen(fd: int, path: str) -> int:
        # A hangup (systemd hangs up /dev/console on shutdown and when a
        # getty restarts) leaves every open slave fd returning EIO; a fresh
        # open of the same pty works as long as we hold the master.
        new = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        if fd >= 0:
            os.close(fd)
        return new

    def _reopen_slaves(self) -> None:
        self.console_slave = self._reopen(self.console_slave, self.console_path)
        for i, path in enumerate(self.tty_paths):
            self.tty_slaves[i] = self._reopen(self.tty_slaves[i], path)

    def _hand_over(self) -> None:
        # An unprivileged container's root must own its cgroups (systemd
        # creates its subtree there) and its console and ttys (or systemd
        # could not reopen /dev/console); tty group 5, as on Debian.
        # With nesting, the v1 controllers' directories too: runtimes inside
        # make and limit cgroups of their own below the container's.
        m = IdMap(self.spec.uid_base, self.spec.gid_base, self.spec.idmap_size)
        delegate_cgroups(
            [
                d
                for h, d in self.cg.dirs
                if self.spec.nesting or h.version == 2 or "name=systemd" in h.controllers
            ],
            m,
        )
        for path in (self.console_path, *self.tty_paths):
            os.chown(path, m.host_uid(0), m.host_gid(5))

    def _launch(self) -> None:
        if self.spec.cgroup_view == "auto":
            # Decided here, from the hierarchies already read, so the launch
            # path does not scan the mount table again.
            # Hierarchies with controllers, and systemd's: another named
            # one (a tool's own) means nothing to runtimes inside, and a
            # mount of it there would keep it alive after the host's goes.
            v1 = tuple(
                f"{os.path.basename(h.mountpoint)}:{_v1_options(h.controllers)}"
                for h, _ in self.cg.dirs
                if h.version == 1 and (_named_only(h.controllers) in ("", "name=systemd"))
            )
            if self.spec.nesting and v1:
                # A nested runtime limits its containers with the host's
                # controllers, which a hybrid host has in v1 only: the
                # container sees the same layout as the host.
                self.spec = replace(self.spec, cgroup_view="hybrid", cgroup_v1=v1)
            else:
                view = "cgroup2" if self.cg.unified else "none"
                self.spec = replace(self.spec, cgroup_view=view)
        self._reopen_slaves()
        self._close_readiness()
        self.notify = readiness.notify_socket()
        self.spec = replace(self.spec, notify_fd=self.notify.fileno())
        if not self.spec.privileged:
            self._launch_userns()
            return
        r, w = os.pipe2(os.O_CLOEXEC)
        # Init-to-be is cloned into a new pid namespace as its PID 1, while
        # the monitor stays outside as its parent and reaper.
        try:
            pid, self.pidfd = sc.clone3(sc.CLONE_NEWPID, signal.SIGCHLD)
        except BaseException:
            os.close(r)
            os.close(w)
            raise
        if pid == 0:
            os.close(r)
            launch.child_main(
                self.spec,
                self.console_slave,
                self.console_path,
                self.tty_paths,
                self.cg.procs_files(),
                w,
            )
        os.close(w)
        err = self._read_launch_error(r, pid)
        if err:
            self._failed(pid, err)
        self._running(pid)

    def _launch_userns(self) -> None:
        if not self.spec.userns:
            self._launch_cloned()
            return
        # Init is forked by a helper that exits at once (launch.py): as a
        # child subreaper the monitor inherits init and stays its parent.
        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
        # Three pipes: errors (close-on-exec: EOF once init runs), init's
        # host pid from the helper, and our go-ahead to init once the
        # helper is reaped and init is our child.
        r, w = os.pipe2(os.O_CLOEXEC)
        pid_r, pid_w = os.pipe2(os.O_CLOEXEC)
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        helper = os.fork()
        if helper == 0:
            os.close(r)
            os.close(pid_r)
            os.close(go_w)
            launch.userns_child_main(
                self.spec,
                self.console_slave,
                self.console_path,
                self.tty_paths,
                self.cg.procs_files(),
                w,
                pid_w,
                go_r,
            )
        os.close(w)
        os.close(pid_w)
        os.close(go_r)
        try:
            raw = b""
            while chunk := os.read(pid_r, 64):
                raw += chunk
        finally:
            os.close(pid_r)
            os.waitpid(helper, 0)
        pid = int(raw) if raw.strip().isdigit() else 0
        if pid:
            try:
                self.pidfd = os.pidfd_open(pid)
                os.write(go_w, b"g")
            except OSError:
                pass  # init died already; the error pipe says why
        os.close(go_w)
        err = self._read_launch_error(r, pid) if pid else _drain(r)
        if err or not pid:
            self._failed(pid, err or "init was not forked")
        self._running(pid)

    def _launch_cloned(self) -> None:
        # No pinned user namespace: init-to-be is cloned straight into new
        # namespaces, the user namespace first (as LXC does), and is our
        # child from the start. Until our go-ahead it has no map, so no ID
        # of its own: what needs host root is done here, before and after
        # the clone (launch.cloned_init_main).
        spec = self.spec
        root = os.path.realpath(spec.rootfs)
        # Without the pool's nosuid and nodev (the host's view only).
        tree = mounts.clone_tree(root, clear=mounts.ROOTFS_ATTRS)
        fds = [tree]
        try:
            if spec.lxcfs:
                launch.clone_lxcfs(spec.lxcfs)
            if spec.nesting:
                launch.clone_nesting_nodes()
            launch.clone_disks(spec)
            r, w = os.pipe2(os.O_CLOEXEC)
            fds.append(r)
            fds.append(w)
            go_r, go_w = os.pipe2(os.O_CLOEXEC)
            fds.append(go_r)
            fds.append(go_w)
            # Its cwd: the path to the rootfs may cross directories that
            # the container's root may not search.
            os.chdir(root)
            # The user namespace is owned by the container's root IDs, not
            # host root: see lxpy.kernel.hostlimits.
            m = IdMap(spec.uid_base, spec.gid_base, spec.idmap_size)
            saved = hostlimits.act_as_owner(m.host_uid(0), m.host_gid(0))
            try:
                pid, self.pidfd = sc.clone3(_CLONED_NS, signal.SIGCHLD)
            except BaseException:
                hostlimits.stop_acting(saved)
                os.chdir("/")
                raise
            if pid == 0:
                launch.cloned_init_main(
                    spec, self.console_slave, self.console_path, self.tty_paths, w, go_r, tree
                )
            hostlimits.stop_acting(saved)
            os.chdir("/")
            try:
                self._hand_to_cloned(pid, tree, root)
                os.write(go_w, b"g")
            except OSError as e:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                os.close(self.pidfd)
                self.pidfd = -1
                raise LxpyError(
                    f"container {spec.name!r} failed to start: {e.strerror or e}",
                    hint="check its ID range and cgroups",
                ) from None
            fds.remove(r)
        finally:
            for fd in fds:
                os.close(fd)
            launch.close_lxcfs()
            launch.close_disks()
        err = self._read_launch_error(r, pid)
        if err:
            self._failed(pid, err)
        self._running(pid)

    def _hand_to_cloned(self, pid: int, tree: int, root: str) -> None:
        # What cloned init-to-be `pid` waits for: its cgroups, its ID map,
        # and the rootfs tree idmapped through its user namespace.
        for procs in self.cg.procs_files():
            sc.write_file(procs, str(pid))
        spec = self.spec
        m = IdMap(spec.uid_base, spec.gid_base, spec.idmap_size)
        namespaces.write_maps(pid, m.uid_map(), m.gid_map())
        userns = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if spec.idmap_method == "idmapped":
                mounts.set_idmap(tree, userns, what=root)
            launch.shift_disks(userns)
        finally:
            os.close(userns)

    def _failed(self, pid: int, err: str) -> NoReturn:
        # Init-to-be `pid` (0: none) ended before exec, for reason `err`.
        if pid:
            os.waitpid(pid, 0)
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        raise LxpyError(
            f"container {self.spec.name!r} failed to start: {err}",
            hint="check the rootfs, its init and the console log",
        )

    def _running(self, pid: int) -> None:
        # Init runs (exec'd) and self.pidfd is its pidfd.
        self.init_pid = pid
        self._watch(self.pidfd, self._on_init_exit)
        if self.notify is not None:
            self._watch(self.notify.fileno(), self._on_notify)
        self.ready_fifo = readiness.open_fifo(pid)
        if self.ready_fifo >= 0:
            self._watch(self.ready_fifo, self._on_ready_fifo)
        self.started_at = time.time()
        self.boots += 1
        self._set_state("RUNNING")

    @staticmethod
    def _read_launch_error(r: int, pid: int) -> str:
        data = b""
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        p = select.poll()
        p.register(r, select.POLLIN)
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not p.poll(left * 1000):
                    os.kill(pid, signal.SIGKILL)
                    return f"init was not exec'd within {LAUNCH_TIMEOUT}s"
                chunk = os.read(r, 4096)
                if not chunk:
                    return data.decode(errors="replace")
                data += chunk
        finally:
            os.close(r)

    # -- the loop ---------------------------------------------------------

    def _watch(self, fd: int, handler: Callable[[int], None], events: int = _READ) -> None:
        self.handlers[fd] = handler
        self.poll.register(fd, events)

    def _unwatch(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            self.poll.unregister(fd)

    def serve(self) -> None:
        """Answer requests and follow init until the container ends for good."""
        while not self.done:
            # Wake for the nearest of: the later work, the stop's deadline,
            # the next repeat of the halt signal.
            due = [self.later_at] if self.later else []
            if self.stop_deadline is not None:
                due.append(self.stop_deadline)
            if self.pending_signal is not None:
                due.append(self.pending_next)
            timeout = max(0.0, min(due) - time.monotonic()) * 1000 if due else None
            for fd, _ev in self.poll.poll(timeout):
                handler = self.handlers.get(fd)
                if handler is not None:
                    handler(fd)
                if self.done:
                    break
            if (
                self.pending_signal is not None
                and not self.done
                and time.monotonic() >= self.pending_next
            ):
                self._signal_init(self.pending_signal)
            if self.stop_deadline is not None and time.monotonic() >= self.stop_deadline:
                self.stop_deadline = None
                self.pending_signal = None
                self._force_kill()
            if self.later and time.monotonic() >= self.later_at:
                work, self.later = self.later, []
                for fn in work:
                    fn()
        self._cleanup()

    def _on_signal(self, fd: int) -> None:
        try:
            sigs = os.read(fd, 64)
        except BlockingIOError:
            return
        if signal.SIGTERM in sigs and not self.stopping:
            self._begin_stop(self.spec.halt_signum(), self.spec.stop_timeout)

    def _on_notify(self, _fd: int) -> None:
        if self.notify is not None and readiness.read_socket(self.notify, self.init_pid):
            self._booted()

    def _on_ready_fifo(self, fd: int) -> None:
        if readiness.read_fifo(fd):
            self._booted()

    def _booted(self) -> None:
        if not self.ready:
            self.ready = True
            self._set_state(self.state)  # subscribers hear it

    def _close_readiness(self) -> None:
        self.ready = False
        if self.notify is not None:
            self._unwatch(self.notify.fileno())
            self.notify.close()
            self.notify = None
        if self.ready_fifo >= 0:
            self._unwatch(self.ready_fifo)
            os.close(self.ready_fifo)
            self.ready_fifo = -1

    def _on_console(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            # EIO: no slave is open, the console was hung up. Hold it open
            # again, or poll() would report the hangup in a busy loop.
            self.console_slave = self._reopen(self.console_slave, self.console_path)
            return
        if not data:
            return
        self.ring += data
        excess = len(self.ring) - self.spec.console_buffer
        if excess > 0:
            del self.ring[:excess]
        if self.log_fd >= 0:
            self._log_console(data)

    def _log_console(self, data: bytes) -> None:
        # A full pool must not stop the console: what cannot be written is
        # counted, and once writes work again a line says how much is
        # missing, so the log never silently skips a part.
        if self.log_lost:
            note = (
                f"\r\n[lxpy: {self.log_lost} bytes of console output were not logged: "
                "the storage pool was full]\r\n"
            ).encode()
            if _write_some(self.log_fd, note) < len(note):
                self.log_lost += len(data)
                return
            self.log_lost = 0
        self.log_lost += len(data) - _write_some(self.log_fd, data)

    def _on_accept(self, _fd: int) -> None:
        assert self.listener is not None
        try:
            sock, _addr = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        # Replies are small and clients read them; a stuck client is dropped
        # after this rather than stalling every container operation.
        sock.settimeout(5.0)
        client = _Client(sock)
        self.clients[sock.fileno()] = client
        self._watch(sock.fileno(), self._on_client)

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        if fd >= 0:
            self._unwatch(fd)
            self.clients.pop(fd, None)
        if client in self.stop_waiters:
            self.stop_waiters.remove(client)
        if client.attached:
            self._resume_console()
        ex, client.exec = client.exec, None
        if ex is not None:
            # The caller hung up: nobody reads the command's output or waits
            # for it any more. It is killed (and reaped when its pidfd fires).
            ex.client = None
            try:
                os.kill(ex.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._close_fds(client)
        client.sock.close()

    @staticmethod
    def _close_fds(client: _Client) -> None:
        for fd in client.fds:
            os.close(fd)
        client.fds = []

    def _send(
        self, client: _Client, reply: dict[str, object], fds: list[int] | None = None
    ) -> None:
        data = (json.dumps(reply) + "\n").encode()
        try:
            if fds:
                socket.send_fds(client.sock, [data], fds)
            else:
                client.sock.sendall(data)
        except OSError:
            self._drop(client)

    def _on_client(self, fd: int) -> None:
        client = self.clients.get(fd)
        if client is None:
            return
        try:
            # recvmsg, not recv: `exec` sends its stdio along. Close-on-exec,
            # so no other child (init after a reboot) inherits them.
            chunk, fds, _flags, _addr = socket.recv_fds(
                client.sock, 65536, 4, socket.MSG_CMSG_CLOEXEC
            )
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        except OSError:
            chunk, fds = b"", []
        client.fds += fds
        if not chunk:
            self._drop(client)
            return
        client.buf += chunk
        if len(client.buf) > 1 << 20:
            self._drop(client)
            return
        while b"\n" in client.buf and client.sock.fileno() >= 0:
            line, _, client.buf = client.buf.partition(b"\n")
            if line.strip():
                self._request(client, line)
                # Descriptors are for the request they came with.
                self._close_fds(client)

    # -- requests ---------------------------------------------------------

    def _request(self, client: _Client, line: bytes) -> None:
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                raise InvalidArgument('a request is a JSON object with a "cmd" string')
            cmd = req["cmd"]
            handler = getattr(self, "_cmd_" + cmd.replace("-", "_"), None)
            if handler is None:
                raise InvalidArgument(
                    f"unknown command {cmd!r}",
                    hint="commands: status, stop, kill, reboot, freeze, thaw, "
                    "console-log, attach, exec, subscribe",
                )
            reply = handler(client, req)
        except ValueError as e:
            reply = _error(InvalidArgument(f"bad request: {e}"))
        except LxpyError as e:
            reply = _error(e)
        except OSError as e:
            reply = _error(LxpyError(f"{e.strerror or e}"))
        if reply is not None:
            self._send(client, reply)

    def status(self) -> dict[str, object]:
        """The state as `status` reports it (also written to the state file)."""
        return {
            "name": self.spec.name,
            "state": self.state,
            "init_pid": self.init_pid,
            "monitor_pid": os.getpid(),
            "started_at": self.started_at,
            "boots": self.boots,
            "ready": self.ready,
            "last_exit": self.last_exit,
            "cgroup": self.cg.paths,
            "console": self.console_path,
        }

    def _cmd_status(self, _c: _Client, _req: dict[str, object]) -> dict[str, object]:
        return {"ok": True, **self.status()}

    def _cmd_console_log(self, _c: _Client, req: dict[str, object]) -> dict[str, object]:
        size = req.get("max", len(self.ring))
        if not isinstance(size, int) or size < 0:
            raise InvalidArgument("console-log: max must be a non-negative integer")
        data = bytes(self.ring[-size:]) if size else b""
        return {"ok": True, "text": data.decode("utf-8", "replace")}

    def _signal_arg(self, req: dict[str, object], default: int) -> int:
        from lxpy.model.units import parse_signal

        value = req.get("signal")
        return default if value in (None, "") else parse_signal(value, "signal")

    def _cmd_stop(self, client: _Client, req: dict[str, object]) -> None:
        sig = self._signal_arg(req, self.spec.halt_signum())
        timeout = req.get("timeout", self.spec.stop_timeout)
        if not isinstance(timeout, int | float) or timeout < 0:
            raise InvalidArgument("stop: timeout must be a non-negative number of seconds")
        self.stop_waiters.append(client)
        self._begin_stop(sig, float(timeout))

    def _begin_stop(self, sig: int, timeout: float) -> None:
        first = not self.stopping
        self.stopping = True
        self._set_state("STOPPING")
        if self.cg.exists() and self._frozen_safe():
            # A frozen init cannot act on the signal; thaw so it can.
            self.cg.thaw()
        deadline = time.monotonic() + timeout
        if first or self.stop_deadline is None or deadline < self.stop_deadline:
            self.stop_deadline = deadline
        if first:
            self._signal_init(sig)
        if timeout == 0:
            self.stop_deadline = None
            self._force_kill()

    def _frozen_safe(self) -> bool:
        try:
            return self.cg.frozen()
        except OSError:
            return False

    def _signal_init(self, sig: int, retry: bool = True) -> None:
        # The kernel drops a signal sent to a pid namespace's init unless
        # init handles or blocks it (SIGKILL aside), and an init exec'd a
        # moment ago may not have set that up yet (systemd takes a few ms).
        # Unless /proc shows init taking the signal, send it again every
        # half second until init ends or the retry window closes. /proc is
        # read before the signal goes: read after, it could show a mask set
        # up in between, for a signal the kernel had already dropped.
        delivered = sig == signal.SIGKILL or _catches(self.init_pid, sig)
        try:
            os.kill(self.init_pid, sig)
        except ProcessLookupError:
            return
        now = time.monotonic()
        if not retry or delivered:
            self.pending_signal = None
        elif self.pending_signal is None:
            self.pending_signal = sig
            self.pending_until = now + max(self.spec.stop_timeout, 5.0)
        elif now >= self.pending_until:
            self.pending_signal = None
        self.pending_next = now + 0.5

    def _force_kill(self) -> None:
        # Graceful did not work (or was not asked for): kill the whole
        # cgroup; init's death then arrives through the pidfd as usual.
        self.stop_forced = True
        try:
            self.cg.kill(timeout=5)
        except (LxpyError, OSError):
            self._signal_init(signal.SIGKILL)

    def _cmd_kill(self, client: _Client, req: dict[str, object]) -> None:
        self.stopping = True
        self._set_state("STOPPING")
        self.stop_waiters.append(client)
        self._force_kill()

    def _cmd_reboot(self, _c: _Client, req: dict[str, object]) -> dict[str, object]:
        if self.state not in ("RUNNING",):
            raise Busy(f"cannot reboot a container that is {self.state}")
        self._signal_init(self._signal_arg(req, self.spec.reboot_signum()))
        return {"ok": True}

    def _cmd_freeze(self, _c: _Client, _req: dict[str, object]) -> dict[str, object]:
        if self.state not in ("RUNNING", "FROZEN"):
            raise Busy(f"cannot freeze a container that is {self.state}")
        self.cg.freeze()
        self._set_state("FROZEN")
        return {"ok": True}

    def _cmd_thaw(self, _c: _Client, _req: dict[str, object]) -> dict[str, object]:
        if self.state not in ("RUNNING", "FROZEN"):
            raise Busy(f"cannot thaw a container that is {self.state}")
        self.cg.thaw()
        self._set_state("RUNNING")
        return {"ok": True}

    def _cmd_subscribe(self, client: _Client, _req: dict[str, object]) -> dict[str, object]:
        client.subscribed = True
        return {"ok": True, **self.status()}

    def _cmd_attach(self, client: _Client, req: dict[str, object]) -> None:
        tty = req.get("tty", 0)
        if not isinstance(tty, int) or not 0 <= tty <= len(self.tty_masters):
            raise InvalidArgument(
                f"attach: tty must be 0 (console) to {len(self.tty_masters)}, got {tty!r}"
            )
        master = self.console_master if tty == 0 else self.tty_masters[tty - 1]
        if tty == 0:
            if any(c.attached for c in self.clients.values()):
                raise Busy("someone is already attached to the console")
            # While the client holds the console, the monitor stops reading
            # it, or the two would split the output between them. Logging
            # resumes when the client's connection closes.
            client.attached = True
            self._unwatch(self.console_master)
        self._send(client, {"ok": True, "tty": tty}, [master])

    def _cmd_exec(self, client: _Client, req: dict[str, object]) -> None:
        spec = attach.ExecSpec.from_json(req)
        if self.state != "RUNNING" or not self.init_pid:
            raise Busy(
                f"cannot exec in a container that is {self.state}",
                hint="unfreeze it first" if self.state == "FROZEN" else None,
            )
        if client.exec is not None:
            raise Busy("this connection already runs a command")
        want = 1 if spec.tty else 3
        if len(client.fds) != want:
            raise InvalidArgument(
                f"exec: expected {want} descriptor(s) with the request, got {len(client.fds)}",
                hint="stdin, stdout, stderr; or, with tty, a unix socket for the pty master",
            )
        drop = [CAPS[c.lower().removeprefix("cap_")] for c in self.spec.drop_caps]
        if self._pidns_fd < 0:
            # Our own pid namespace, to return to after each exec's fork.
            self._pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        r, w = os.pipe2(os.O_CLOEXEC)
        pid = -1
        pidns = os.open(f"/proc/{self.init_pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        try:
            # The next child is born in the container's pid namespace; we
            # stay outside as its parent, as for init.
            sc.setns(pidns, sc.CLONE_NEWPID)
            try:
                pid = os.fork()
                if pid == 0:
                    os.close(r)
                    attach.child_main(
                        self.init_pid,
                        spec,
                        client.fds,
                        self.cg.procs_files(),
                        drop,
                        w,
                        seccomp.default_policy(self.spec.syscalls_deny, self.spec.syscalls_allow),
                        self.spec.no_new_privs,
                        self.spec.apparmor,
                    )
            finally:
                # Back to our own namespace, for the next exec and a reboot.
                if pid != 0:
                    sc.setns(self._pidns_fd, sc.CLONE_NEWPID)
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(pidns)
            os.close(w)
        self._close_fds(client)
        ex = _Exec(client, pid, os.pidfd_open(pid), r)
        client.exec = ex
        self.execs[ex.pidfd] = ex
        self._watch(r, lambda _fd: self._on_exec_setup(ex))
        self._watch(ex.pidfd, self._on_exec_exit)

    def _on_exec_setup(self, ex: _Exec) -> None:
        # The error pipe: data is why the set-up failed, EOF without data
        # means the command was exec'd.
        try:
            chunk = os.read(ex.errfd, 8192)
        except (BlockingIOError, InterruptedError):
            return
        if chunk:
            ex.err += chunk
            return
        self._unwatch(ex.errfd)
        os.close(ex.errfd)
        ex.errfd = -1
        ex.started = not ex.err
        if ex.client is None:
            return
        if ex.started:
            self._send(ex.client, {"ok": True, "pid": ex.pid})
            return
        try:
            err = json.loads(ex.err)
            reply: dict[str, object] = {
                "ok": False,
                "error": err if isinstance(err, dict) else {"message": str(err)},
            }
        except ValueError:
            reply = _error(LxpyError(ex.err.decode(errors="replace")))
        self._send(ex.client, reply)

    def _on_exec_exit(self, fd: int) -> None:
        ex = self.execs.pop(fd)
        self._unwatch(fd)
        os.close(fd)
        _pid, status = os.waitpid(ex.pid, 0)
        if ex.errfd >= 0:
            # The child is gone, so the pipe holds all it will ever say.
            os.set_blocking(ex.errfd, True)
            while ex.errfd >= 0:
                self._on_exec_setup(ex)
        client, ex.client = ex.client, None
        if client is None:
            return
        client.exec = None
        if ex.started:
            self._send(client, {"event": "exit", "code": attach.exit_code(status)})
        self._drop(client)

    def _end_execs(self) -> None:
        # Init is gone, and with its pid namespace every exec child; reap
        # them and tell their callers.
        for fd in list(self.execs):
            try:
                os.kill(self.execs[fd].pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._on_exec_exit(fd)

    def _resume_console(self) -> None:
        if self.console_master >= 0 and self.console_master not in self.handlers:
            self._watch(self.console_master, self._on_console)

    # -- init's end -------------------------------------------------------

    def _on_init_exit(self, fd: int) -> None:
        self._unwatch(fd)
        os.close(fd)
        self.pidfd = -1
        self.pending_signal = None
        _pid, status = os.waitpid(self.init_pid, 0)
        reason, detail = _why(status)
        self.last_exit = {"reason": reason, "detail": detail, "at": time.time()}
        self._close_readiness()  # the next boot has to say so again
        # The pid namespace died with init; anything still in the cgroups
        # came in from outside (nsenter) and goes too. Whatever fails here,
        # init's end must still be recorded (STOPPED below): a monitor that
        # died now would leave lxpyd to guess.
        try:
            self.cg.kill(timeout=5)
        except (LxpyError, OSError):
            pass
        if reason == "reboot" and not self.stopping:
            self._set_state("REBOOTING")
            # The hierarchies were read, and the cgroups made, at the first
            # start: others may have changed them since.
            for change in self.cg.mend():
                print(f"lxpy monitor {self.spec.name}: cgroups: {change}", file=sys.stderr)
            try:
                self._launch()
                return
            except LxpyError as e:
                self.last_exit = {"reason": "error", "detail": e.message, "at": time.time()}
        if self.stopping:
            self.last_exit["stopped"] = True
            self.last_exit["forced"] = self.stop_forced
        self.init_pid = 0
        self._set_state("STOPPED")
        self.done = True

    def _set_state(self, state: str) -> None:
        self.state = state
        self._write_state_file()
        event = {"event": "state", **self.status()}
        for client in [c for c in self.clients.values() if c.subscribed]:
            self._send(client, event)

    def _write_state_file(self) -> None:
        if not self.spec.state_file:
            return
        tmp = self.spec.state_file + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(self.status(), f)
            os.replace(tmp, self.spec.state_file)
        except OSError:
            pass

    def _cleanup(self) -> None:
        # Idempotent: runs after the loop, or after a failed start.
        self._end_execs()
        self._close_readiness()
        if self._owns_cgroup:
            try:
                self.cg.kill(timeout=5)
                self.cg.remove(timeout=5)
            except LxpyError as e:
                print(f"lxpy monitor {self.spec.name}: {e.message}", file=sys.stderr)
            except OSError as e:
                print(f"lxpy monitor {self.spec.name}: removing its cgroups: {e}", file=sys.stderr)
        for client in list(self.stop_waiters):
            self._send(client, {"ok": True, "last_exit": self.last_exit})
        self.stop_waiters.clear()
        for client in list(self.clients.values()):
            self._drop(client)
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            try:
                os.unlink(self.spec.control_socket)
            except FileNotFoundError:
                pass
        for fd in (
            self.console_master,
            self.console_slave,
            *self.tty_masters,
            *self.tty_slaves,
            self.log_fd,
            self._pidns_fd,
            self.pidfd,
        ):
            if fd >= 0:
                os.close(fd)
        self.console_master = self.console_slave = self.log_fd = self._pidns_fd = -1
        self.pidfd = -1
        self.tty_masters, self.tty_slaves = [], []


def _write_some(fd: int, data: bytes) -> int:
    """Write `data` to `fd` as far as it goes; how many bytes were written."""
    done = 0
    while done < len(data):
        try:
            n = os.write(fd, data[done:])
        except OSError:
            break
        if n <= 0:
            break
        done += n
    return done


def _drain(fd: int) -> str:
    """Everything left in a pipe whose writers are gone, then closed."""
    data = b""
    try:
        while chunk := os.read(fd, 4096):
            data += chunk
    finally:
        os.close(fd)
    return data.decode(errors="replace")


def _catches(pid: int, sig: int) -> bool:
    """Whether `sig` sent to `pid`, a pid namespace's init, would be delivered.

    It is when init has a handler for it (SigCgt) or blocks it (SigBlk:
    systemd blocks its signals and reads them from a signalfd).
    """
    mask = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("SigCgt:", "SigBlk:")):
                    mask |= int(line.split()[1], 16)
    except (OSError, ValueError):
        return False
    return bool(mask >> (sig - 1) & 1)


def _why(status: int) -> tuple[str, str]:
    """Why init ended, from its wait status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        # reboot(2) in a pid namespace: init is killed with SIGHUP for a
        # restart and SIGINT for a halt or power-off.
        if sig == signal.SIGHUP:
            return "reboot", "reboot requested inside the container"
        if sig == signal.SIGINT:
            return "poweroff", "halt or power-off requested inside the container"
        return "killed", f"killed by {signal.Signals(sig).name}"
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    return "exited", f"exited with status {code}"


def run(spec: LaunchSpec, ready_fd: int = -1) -> int:
    """Run a monitor for `spec` in the calling process until the container ends.

    Args:
        spec: the container.
        ready_fd: if >= 0, one JSON line is written there once init runs
            ({"ok": true, "monitor_pid", "init_pid"}) or the start failed
            ({"ok": false, "error": {...}}), and it is closed.

    Returns:
        The exit status for the process: 0 after a normal end, 1 when the
        container could not start.
    """
    try:
        sc.set_process_name(f"lxpy-mon {spec.name}")
    except OSError:
        pass
    mon = Monitor(spec)
    try:
        mon.start()
    except LxpyError as e:
        _ready(ready_fd, _error(e))
        return 1
    except Exception as e:  # anything else is still a failed start to report
        _ready(ready_fd, _error(LxpyError(f"{type(e).__name__}: {e}")))
        return 1
    _ready(ready_fd, {"ok": True, "monitor_pid": os.getpid(), "init_pid": mon.init_pid})
    # Off the start's path, and a little after it: init's first
    # milliseconds (a dynamic init loading its libraries) need the CPU more.
    # What this monitor has written by then is mostly what every other
    # monitor wrote too.
    mon.later = [_mark_mergeable]
    if LEARN is not None:
        learn = LEARN
        if learn[1] == 0:
            # The first set is saved at once: the next spare is forked
            # sooner than SETTLE (zygote.SPARE_IDLE) and would find none.
            _learn(*learn)
        else:
            mon.later.append(lambda: _learn(*learn))
    mon.later_at = time.monotonic() + SETTLE
    mon.serve()
    return 0


# Seconds after a start's answer before the monitor marks its memory
# mergeable and saves the pages its start wrote.
SETTLE = 0.1


def _mark_mergeable() -> None:
    try:
        ksm.mark_mergeable()
    except OSError:
        pass


def _learn(path: str, known: int, zygote: int) -> None:
    # Save the pages this start wrote for the next spare to copy in ahead
    # (lxpy.runtime.zygote._fork_spare), if they are more than the set it
    # was given; only while its zygote lives (the set holds its addresses).
    try:
        runs = pages.written()
        if pages.total(runs) > known and os.getppid() == zygote:
            pages.save(path, runs)
    except OSError:
        pass  # a saving, never a condition


def report(ready_fd: int, e: LxpyError) -> None:
    """Answer on `ready_fd` (as run() does) that a start failed with `e`."""
    _ready(ready_fd, _error(e))


def _ready(fd: int, msg: dict[str, object]) -> None:
    if fd < 0:
        return
    try:
        os.write(fd, (json.dumps(msg) + "\n").encode())
    except OSError:
        pass
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    """`python -m lxpy.runtime.monitor SPEC.json`: run one monitor in the foreground."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m lxpy.runtime.monitor SPEC.json", file=sys.stderr)
        return 2
    with open(args[0]) as f:
        spec = LaunchSpec.from_json(json.load(f))
    return run(spec, ready_fd=1)


def _named_only(controllers: tuple[str, ...]) -> str:
    # "name=X" for a v1 hierarchy that has a name and no controllers, else "".
    if controllers and all(c.startswith("name=") for c in controllers):
        return ",".join(controllers)
    return ""


def _v1_options(controllers: tuple[str, ...]) -> str:
    # The mount options that name a v1 hierarchy: its controllers, or
    # "none,name=X" for a named one (which has none).
    named = _named_only(controllers)
    return f"none,{named}" if named else ",".join(controllers)


if __name__ == "__main__":
    sys.exit(main())
