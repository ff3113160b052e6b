"""The Debian 12 guest image for the tests that need a whole host of their
own (tests/vm/guest.py boots it).

`build_image()` makes, once per machine and set of inputs, a raw ext4 root
image with mmdebstrap, its kernel and initrd beside it for a direct kernel
boot, and a root ssh key.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
# Bump when the build steps change in a way the inputs below do not show.
BUILD_VERSION = 1
DISK_SIZE = "6G"
HOSTNAME = "lxpy-vm"
# What the image holds, with their dependencies (mmdebstrap adds no recommends).
PACKAGES = tuple(
    """
    linux-image-amd64 initramfs-tools zstd systemd-sysv udev dbus libpam-systemd kmod
    openssh-server netbase btrfs-progs iproute2 nftables dnsmasq-base busybox-static
    debootstrap mmdebstrap python3 python3.11 libbtrfsutil1 adduser mount procps e2fsprogs
    apparmor ca-certificates xz-utils
    """.split()
)
SOURCES = (
    f"deb {MIRROR} {SUITE} main",
    f"deb {MIRROR} {SUITE}-updates main",
    f"deb {SECURITY_MIRROR} {SUITE}-security main",
)
# Files laid into the image after mmdebstrap, relative to its root.
GUEST_FILES = {
    "etc/hostname": f"{HOSTNAME}\n",
    "etc/hosts": f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n::1 localhost ip6-localhost\n",
    # No fsck pass: every boot starts from the same clean image.
    "etc/fstab": "/dev/vda / ext4 rw,errors=remount-ro 0 0\n",
    "etc/apt/sources.list": "".join(line + "\n" for line in SOURCES),
    # pam_env reads it at every ssh login, and warns when it is missing.
    "etc/default/locale": "LANG=C.UTF-8\n",
    "etc/systemd/network/20-wired.network": "[Match]\nType=ether\n\n[Network]\nDHCP=yes\n",
    "etc/ssh/sshd_config.d/lxpy-vm.conf": (
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n"
    ),
}
ENABLE_UNITS = ("systemd-networkd.service", "ssh.service")
# apt's timers would reach for a mirror the guest cannot reach and leave
# failed units behind (a degraded system).
MASK_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer")
# What the initramfs must hold (as modules or built in) to mount /dev/vda.
ROOT_MODULES = ("virtio_pci", "virtio_blk", "ext4")
HOST_TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "mmdebstrap": "mmdebstrap",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "mkfs.ext4": "e2fsprogs",
    "unshare": "util-linux",
}

BUILD_TIMEOUT = 1800
BOOT_TIMEOUT = float(os.environ.get("LXPY_VM_BOOT_TIMEOUT", "420"))
SHUTDOWN_TIMEOUT = 60
KEEP_LOGS = 20
# A key not used for this long is removed when another one is in use.
KEEP_UNUSED_KEYS = 24 * 3600


class GuestError(Exception):
    """The guest could not be built, booted or reached."""


@dataclass(frozen=True)
class VmImage:
    """A built guest image: a directory under the cache named by its key."""

    dir: Path

    @property
    def key(self) -> str:
        return self.dir.name

    @property
    def disk(self) -> Path:
        return self.dir / "disk.raw"

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    @property
    def ssh_key(self) -> Path:
        return self.dir / "id_ed25519"


def image_key() -> str:
    """The hash of everything the image is built from, which names its
    directory in the cache."""
    inputs = {
        "version": BUILD_VERSION,
        "suite": SUITE,
        "sources": SOURCES,
        "packages": PACKAGES,
        "files": GUEST_FILES,
        "enable": ENABLE_UNITS,
        "mask": MASK_UNITS,
        "size": DISK_SIZE,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def vm_dir(cache: Path) -> Path:
    return cache / "vm"


def log_dir(cache: Path) -> Path:
    return vm_dir(cache) / "logs"


def ensure_host_tools() -> None:
    """Install the Debian packages the harness runs (QEMU, mmdebstrap, ssh)
    when one of their commands is missing.

    Raises:
        GuestError: apt-get failed (its output in the message).
    """
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if res.returncode != 0:
            raise GuestError(f"{' '.join(cmd)} failed:\n{res.stdout}{res.stderr}")


def build_image(cache: Path) -> VmImage:
    """The guest image for the current inputs, built into `cache`/vm/KEY
    unless it is there already. Other keys unused for a day are removed.

    A build goes to a temporary directory renamed into place when complete,
    under a lock, so a killed or concurrent build leaves nothing that a
    later run would use; its log is kept in `cache`/vm/logs.

    Raises:
        GuestError: the build failed (with the end of its log).
    """
    base = vm_dir(cache)
    base.mkdir(parents=True, exist_ok=True)
    key = image_key()
    image = VmImage(base / key)
    ensure_host_tools()
    with _locked(base / ".lock", timeout=BUILD_TIMEOUT):
        _prune_images(base, key)
        if not image.dir.is_dir():
            log = new_log(cache, f"build-{key}")
            tmp = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=base))
            try:
                _build_into(tmp, log)
                tmp.rename(image.dir)
            except BaseException:
                remove_tree(tmp)
                raise
        # The mtime of `used` tells the pruning of other runs what is live.
        (image.dir / "used").touch()
    return image


@contextlib.contextmanager
def _locked(path: Path, timeout: float) -> Iterator[None]:
    with path.open("a") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise GuestError(f"{path} stayed locked for {timeout} s") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _prune_images(base: Path, key: str) -> None:
    # Called under the build lock: a .build-* directory is a dead build.
    now = time.time()
    for d in base.iterdir():
        if d.name.startswith(".build-"):
            remove_tree(d)
        elif d.is_dir() and d.name not in (key, "logs", "run"):
            used = d / "used"
            if not used.exists() or now - used.stat().st_mtime > KEEP_UNUSED_KEYS:
                remove_tree(d)


def remove_tree(path: Path) -> None:
    # --one-file-system: never reach through a mount left inside.
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def new_log(cache: Path, stem: str) -> Path:
    logs = log_dir(cache)
    logs.mkdir(parents=True, exist_ok=True)
    prefix = stem.split("-")[0]
    old = sorted(logs.glob(f"{prefix}-*.log"), key=lambda p: p.stat().st_mtime)
    for p in old[: max(0, len(old) - KEEP_LOGS + 1)]:
        p.unlink(missing_ok=True)
    fd, name = tempfile.mkstemp(
        prefix=f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log", dir=logs
    )
    os.close(fd)
    return Path(name)


def _run_logged(
    cmd: Sequence[str], log: Path, timeout: float, env: dict[str, str] | None = None
) -> None:
    with log.open("ab") as f:
        f.write(f"\n$ {shlex.join(cmd)}\n".encode())
        f.flush()
        try:
            res = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=f,
                timeout=timeout,
                check=False,
                env=env,
                preexec_fn=die_with_parent,
            )
        except subprocess.TimeoutExpired:
            raise GuestError(
                f"{cmd[0]} took over {timeout} s:\n{tail_of(log)}\n(log: {log})"
            ) from None
    if res.returncode != 0:
        raise GuestError(
            f"{shlex.join(cmd)} exited {res.returncode}:\n{tail_of(log)}\n(log: {log})"
        )


def _build_into(out: Path, log: Path) -> None:
    rootfs = out / "rootfs"
    # mmdebstrap's own temporary files (its gpg home) stay in the build
    # directory, so a killed build leaves none in /tmp.
    tmp = out / "tmp"
    tmp.mkdir()
    started = time.monotonic()
    # The list of the initramfs is read inside, where its tools are.
    list_initrd = 'chroot "$1" sh -c "lsinitramfs /boot/initrd.img-*" > "$1/../initrd.list"'
    # Namespaces of its own: mmdebstrap's /proc, /sys and /dev mounts in the
    # root go with the mount namespace, and its forked workers, apt and dpkg
    # with the pid namespace, when unshare dies (_run_logged ties it to this
    # process) and --kill-child takes mmdebstrap, the namespace's init.
    _run_logged(
        [
            *("unshare", "--mount", "--propagation", "private", "--pid", "--fork"),
            *("--kill-child", "--mount-proc"),
            "mmdebstrap",
            "--mode=root",
            "--variant=apt",
            "--format=directory",
            f"--include={','.join(PACKAGES)}",
            f"--customize-hook={list_initrd}",
            SUITE,
            str(rootfs),
            *SOURCES,
        ],
        log,
        timeout=BUILD_TIMEOUT,
        env=dict(os.environ, TMPDIR=str(tmp)),
    )
    _check_initrd(rootfs, out / "initrd.list")
    (kernel,) = sorted(rootfs.glob("boot/vmlinuz-*"))
    (initrd,) = sorted(rootfs.glob("boot/initrd.img-*"))
    shutil.copyfile(kernel, out / "vmlinuz")
    shutil.copyfile(initrd, out / "initrd.img")

    for rel, text in GUEST_FILES.items():
        path = rootfs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    # A machine id of its own: with an empty one, every boot of the
    # pristine image is a first boot, whose wizard asks on the console.
    (rootfs / "etc/machine-id").write_text(os.urandom(16).hex() + "\n")
    key = VmImage(out).ssh_key
    _run_logged(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", HOSTNAME, "-f", str(key)],
        log,
        timeout=60,
    )
    ssh_dir = rootfs / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
    (ssh_dir / "authorized_keys").chmod(0o600)
    _run_logged(["systemctl", f"--root={rootfs}", "enable", *ENABLE_UNITS], log, timeout=60)
    _run_logged(["systemctl", f"--root={rootfs}", "mask", *MASK_UNITS], log, timeout=60)

    disk = out / "disk.raw"
    _run_logged(["truncate", "-s", DISK_SIZE, str(disk)], log, timeout=60)
    _run_logged(
        ["mkfs.ext4", "-q", "-F", "-L", HOSTNAME, "-d", str(rootfs), str(disk)], log, timeout=600
    )
    remove_tree(rootfs)
    remove_tree(tmp)
    (out / "initrd.list").unlink()
    # Only ever a backing file: a boot that wrote to it would spoil the cache.
    disk.chmod(0o444)
    manifest = {
        "key": image_key(),
        "kernel": kernel.name.removeprefix("vmlinuz-"),
        "packages": PACKAGES,
        "sources": SOURCES,
        "build_seconds": round(time.monotonic() - started, 1),
        "log": str(log),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _check_initrd(rootfs: Path, listing: Path) -> None:
    (modules,) = rootfs.glob("lib/modules/*")
    builtin = (modules / "modules.builtin").read_text()
    files = listing.read_text()
    lacking = [
        m
        for m in ROOT_MODULES
        if not re.search(rf"/{m}\.ko(\.\w+)?$", files, re.M)
        and not re.search(rf"/{m}\.ko$", builtin, re.M)
    ]
    if lacking:
        raise GuestError(f"the initramfs lacks {', '.join(lacking)}: the root would not mount")


def die_with_parent() -> None:
    # QEMU must not outlive the test process, however that ends.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL))


_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[A-Za-z]|\r")


def tail_of(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_bytes()[-64 * 1024 :].decode(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(_ESCAPES.sub("", text).splitlines()[-lines:])
