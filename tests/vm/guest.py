"""Debian 12 guests under QEMU, for tests that need a whole host of their
own: systemd as PID 1, pure cgroup v2, a kernel that can be rebooted.

`Guest` boots a throwaway qcow2 overlay of the image that tests/vm/image.py
builds and drives it over ssh on a loopback port forward. The guest
reaches nothing outside: QEMU's user-mode network runs with restrict=on.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from tests.vm.image import (
    BOOT_TIMEOUT,
    SHUTDOWN_TIMEOUT,
    GuestError,
    VmImage,
    die_with_parent,
    new_log,
    remove_tree,
    tail_of,
    vm_dir,
)


class GuestCommandError(GuestError):
    """A command in the guest exited non-zero (its result in `.result`)."""

    def __init__(self, message: str, result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(message)
        self.result = result


# -- booting ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@functools.cache
def kvm_works(kernel: Path) -> bool:
    """Whether `kernel` boots under KVM here: it must get through its whole
    start to the panic for a missing root within seconds. (Nested KVM can
    stall early in a boot, and then TCG is the way.)"""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    cmd = [
        "qemu-system-x86_64",
        *("-accel", "kvm", "-cpu", "host", "-m", "512", "-smp", "1"),
        *("-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"),
        *("-serial", "stdio", "-kernel", str(kernel)),
        *("-append", "console=ttyS0 panic=-1"),
    ]
    try:
        res = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=20,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    except subprocess.TimeoutExpired:
        return False
    return res.returncode == 0 and b"Kernel panic" in res.stdout


def choose_accel(kernel: Path) -> str:
    """`kvm` or `tcg`: $LXPY_VM_ACCEL when it names one, else (`auto`) KVM
    when the probe shows it works.

    Raises:
        ValueError: $LXPY_VM_ACCEL is something else.
    """
    want = os.environ.get("LXPY_VM_ACCEL", "auto")
    if want in ("kvm", "tcg"):
        return want
    if want != "auto":
        raise ValueError(f"LXPY_VM_ACCEL={want!r}: expected auto, kvm or tcg")
    return "kvm" if kvm_works(kernel) else "tcg"


_open_guests: weakref.WeakSet[Guest] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # A run interrupted before the fixtures' teardown still leaves no guest.
    for g in list(_open_guests):
        g.close(graceful=False)


class Guest:
    """A throwaway boot of `image` under QEMU, driven over ssh as root.

    Use it as a context manager: entering boots and waits for ssh, leaving
    powers off (then kills) QEMU and removes the overlay. The console and
    QEMU's messages go to `log`, kept in the cache's vm/logs.
    """

    def __init__(
        self,
        image: VmImage,
        *,
        memory_mib: int = 4096,
        cpus: int = 2,
        accel: str | None = None,
        boot_timeout: float = BOOT_TIMEOUT,
        cmdline: str = "",
    ) -> None:
        """Args:
        image: from build_image().
        memory_mib, cpus: the guest's size.
        accel: `kvm` or `tcg`; None chooses (choose_accel()).
        boot_timeout: seconds from QEMU's start to ssh answering.
        cmdline: added to the kernel command line.
        """
        self.image = image
        self.memory_mib = memory_mib
        self.cpus = cpus
        self.accel = accel
        self.boot_timeout = boot_timeout
        self.cmdline = cmdline
        cache = image.dir.parent.parent
        self.log = new_log(cache, "guest")
        self.port = 0
        self.boot_seconds = 0.0
        self._started = 0.0
        self._log_start = 0
        self._run_base = vm_dir(cache) / "run"
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Guest:
        self.start()
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- life cycle ----------------------------------------------------------

    def start(self) -> None:
        """Boot a fresh overlay of the image and wait until ssh answers.

        Raises:
            GuestError: QEMU failed or ssh did not answer within
                boot_timeout (with the end of the console log).
        """
        _open_guests.add(self)
        try:
            self._prepare()
            # The free port can be taken between the probe and QEMU's bind:
            # try again on another.
            for _ in range(3):
                self._launch()
                try:
                    self._wait_ssh(time.monotonic() + self.boot_timeout)
                    return
                except _PortTaken:
                    self._kill()
            raise GuestError(f"no free loopback port for the guest's ssh\n{self._where()}")
        except BaseException:
            self.close(graceful=False)
            raise

    def _prepare(self) -> None:
        self._run_base.mkdir(parents=True, exist_ok=True)
        for d in self._run_base.iterdir():
            # Run dirs are named after the pid that made them: a dead one's
            # is left by a killed run.
            pid = d.name.partition("-")[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                remove_tree(d)
        self._dir = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=self._run_base))
        subprocess.run(
            [
                *("qemu-img", "create", "-q", "-f", "qcow2"),
                *("-F", "raw", "-b", str(self.image.disk), str(self.overlay)),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        if self.accel is None:
            self.accel = choose_accel(self.image.kernel)

    @property
    def overlay(self) -> Path:
        assert self._dir is not None
        return self._dir / "overlay.qcow2"

    def _launch(self) -> None:
        self.port = _free_port()
        accel = ["-accel", "kvm", "-cpu", "host"]
        if self.accel == "tcg":
            accel = ["-accel", "tcg,thread=multi", "-cpu", "max"]
        append = f"root=/dev/vda rootfstype=ext4 rw console=ttyS0 {self.cmdline}".strip()
        cmd = [
            "qemu-system-x86_64",
            *("-name", f"lxpy-test-{os.getpid()}", "-machine", "q35", *accel),
            *("-m", str(self.memory_mib), "-smp", str(self.cpus)),
            *("-nodefaults", "-no-user-config", "-display", "none"),
            *("-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd)),
            *("-append", append),
            # The overlay is thrown away: its flushes need not reach the disk.
            *("-drive", f"file={self.overlay},if=virtio,format=qcow2,cache=unsafe,discard=unmap"),
            # restrict=on: the guest reaches nothing outside, not even the host;
            # only the forward to its sshd comes in.
            *("-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{self.port}-:22"),
            *("-device", "virtio-net-pci,netdev=net0", "-device", "virtio-rng-pci"),
            *("-chardev", f"file,id=console,path={self.log},append=on"),
            *("-serial", "chardev:console"),
        ]
        with self.log.open("ab") as f:
            f.write(f"$ {shlex.join(cmd)}\n".encode())
            f.flush()
            self._log_start = f.tell()
            # Its own session: Ctrl-C reaches the test, which then powers
            # the guest off, not QEMU directly; killpg() ends it all.
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=f,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        self._started = time.monotonic()

    def _wait_ssh(self, deadline: float, differs_from: str | None = None) -> None:
        # Polls a fresh ssh connection (no master: a master from before a
        # reboot would answer for the old boot).
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                with self.log.open("rb") as f:
                    f.seek(self._log_start)
                    said = f.read().decode(errors="replace")
                if "host forwarding" in said:
                    raise _PortTaken
                raise GuestError(f"QEMU exited {self._proc.returncode}\n{self._where()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestError(
                    f"ssh on 127.0.0.1:{self.port} did not answer in time\n{self._where()}"
                )
            try:
                res = subprocess.run(
                    self.ssh_command("cat /proc/sys/kernel/random/boot_id", master=False),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=min(30, left),
                )
                boot_id = res.stdout.strip() if res.returncode == 0 else None
            except subprocess.TimeoutExpired:
                boot_id = None
            if boot_id and boot_id != differs_from:
                self.boot_seconds = time.monotonic() - self._started
                return
            time.sleep(1)

    def reboot(self, timeout: float | None = None) -> None:
        """`systemctl reboot` in the guest, and wait until it is back: ssh
        answering from a new boot.

        Raises:
            GuestError: it did not come back within `timeout` seconds
                (boot_timeout by default).
        """
        before = self.run("cat /proc/sys/kernel/random/boot_id").stdout.strip()
        # The connection may drop before systemctl answers.
        self.run("systemctl reboot", check=False, timeout=60)
        self._stop_master()
        self._started = time.monotonic()
        self._wait_ssh(self._started + (timeout or self.boot_timeout), differs_from=before)

    def close(self, graceful: bool = True) -> None:
        """Power the guest off (kill QEMU after SHUTDOWN_TIMEOUT s, or at
        once when not `graceful`) and remove its overlay. Idempotent."""
        try:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                self._stop_master()
                if graceful:
                    self._power_off(proc)
        finally:
            self._kill()
            if self._dir is not None:
                remove_tree(self._dir)
                self._dir = None
            _open_guests.discard(self)

    def _power_off(self, proc: subprocess.Popen[bytes]) -> None:
        try:
            subprocess.run(
                self.ssh_command("systemctl poweroff", master=False),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=20,
            )
            proc.wait(timeout=SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass

    def _kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self._proc = None

    def _stop_master(self) -> None:
        if self._dir is not None and self._control.exists():
            subprocess.run(
                [*self._ssh_options(), "-O", "exit", "root@127.0.0.1"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=10,
            )

    # -- the command channel -----------------------------------------------

    @property
    def _control(self) -> Path:
        assert self._dir is not None
        return self._dir / "ssh"

    def _ssh_options(self, master: bool = True) -> list[str]:
        opts = [
            "ssh",
            *("-F", "/dev/null", "-p", str(self.port), "-i", str(self.image.ssh_key)),
            *("-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"),
            *("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"),
            *("-o", "ConnectTimeout=10", "-o", "ConnectionAttempts=1"),
            # A guest that hangs ends the connection within two minutes;
            # a TCG guest on a busy host can be silent for half a minute.
            *("-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=24"),
        ]
        if master:
            # One connection shared by the calls that follow: a command
            # costs a round trip, not a key exchange.
            opts += ["-o", "ControlMaster=auto", "-o", f"ControlPath={self._control}"]
            opts += ["-o", "ControlPersist=300"]
        else:
            opts += ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
        return opts

    def ssh_command(self, cmd: str | Sequence[str], master: bool = True) -> list[str]:
        """The ssh command line that runs `cmd` in the guest as root: a
        string goes to the guest's shell as it is, a sequence is quoted."""
        if not isinstance(cmd, str):
            cmd = shlex.join(cmd)
        return [*self._ssh_options(master), "--", "root@127.0.0.1", cmd]

    def run(
        self,
        cmd: str | Sequence[str],
        *,
        check: bool = True,
        timeout: float = 120,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` in the guest as root (see ssh_command()), its output
        captured as text.

        Raises:
            GuestCommandError: with `check`, it exited non-zero.
            GuestError: it did not end within `timeout` seconds.
        """
        argv = self.ssh_command(cmd)
        try:
            res = subprocess.run(
                argv,
                input=input,
                stdin=subprocess.DEVNULL if input is None else None,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise GuestError(f"{argv[-1]!r} took over {timeout} s in the guest") from None
        if check and res.returncode != 0:
            raise GuestCommandError(
                f"{argv[-1]!r} exited {res.returncode} in the guest\n"
                f"stdout: {res.stdout}\nstderr: {res.stderr}",
                res,
            )
        return res

    def put(self, local: str | Path, remote: str, timeout: float = 300) -> None:
        """Copy the file or directory `local` to `remote` in the guest (a
        directory's content goes into `remote`, made when missing).

        Raises:
            GuestError: the copy failed.
        """
        local = Path(local)
        r = shlex.quote(remote)
        if local.is_dir():
            with subprocess.Popen(
                ["tar", "-C", str(local), "-cf", "-", "."], stdout=subprocess.PIPE
            ) as tar:
                self._pipe(f"mkdir -p {r} && tar -C {r} -xf -", tar.stdout, None, timeout)
            if tar.returncode != 0:
                raise GuestError(f"tar of {local} exited {tar.returncode}")
        else:
            mode = oct(local.stat().st_mode & 0o7777)[2:]
            with local.open("rb") as f:
                self._pipe(f"cat > {r} && chmod {mode} {r}", f, None, timeout)

    def get(self, remote: str, local: str | Path, timeout: float = 300) -> None:
        """Copy the file or directory `remote` in the guest to `local` (a
        directory's content goes into `local`, made when missing).

        Raises:
            GuestError: the copy failed.
        """
        local = Path(local)
        r = shlex.quote(remote)
        if self.run(f"test -d {r}", check=False).returncode == 0:
            local.mkdir(parents=True, exist_ok=True)
            with subprocess.Popen(
                ["tar", "-C", str(local), "-xf", "-"], stdin=subprocess.PIPE
            ) as tar:
                self._pipe(f"tar -C {r} -cf - .", None, tar.stdin, timeout)
                assert tar.stdin is not None
                tar.stdin.close()
            if tar.returncode != 0:
                raise GuestError(f"tar into {local} exited {tar.returncode}")
        else:
            part = local.with_name(local.name + ".part")
            try:
                with part.open("wb") as f:
                    self._pipe(f"cat {r}", None, f, timeout)
                part.rename(local)
            finally:
                part.unlink(missing_ok=True)

    def _pipe(
        self, cmd: str, stdin: IO[bytes] | None, stdout: IO[bytes] | None, timeout: float
    ) -> None:
        try:
            res = subprocess.run(
                self.ssh_command(cmd),
                stdin=subprocess.DEVNULL if stdin is None else stdin,
                stdout=subprocess.DEVNULL if stdout is None else stdout,
                stderr=subprocess.PIPE,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise GuestError(f"{cmd!r} took over {timeout} s in the guest") from None
        if res.returncode != 0:
            raise GuestError(
                f"{cmd!r} exited {res.returncode}: {res.stderr.decode(errors='replace')}"
            )

    # -- diagnosis -------------------------------------------------------------

    def console_tail(self, lines: int = 60) -> str:
        """The last `lines` of the console and QEMU's messages."""
        return tail_of(self.log, lines)

    def _where(self) -> str:
        return f"--- end of {self.log} ---\n{self.console_tail()}"


class _PortTaken(Exception):
    pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
