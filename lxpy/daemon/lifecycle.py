"""Running containers: start, stop, restart, freeze, console log, adoption.

lxpyd does not run containers itself: one zygote per daemon root forks a
monitor per container (lxpy.runtime), and the monitor is init's parent. The
daemon builds the launch spec, attaches the network namespace, asks the
zygote for a monitor, and then follows the monitor's `subscribe` stream in
one watcher task per container. The watcher alone turns "the monitor is
gone" into STOPPED (init powered off or was stopped) or ERROR (the monitor
died without a last word), so a stop request and a poweroff inside end the
same way: network detached, state STOPPED, one event each.

Monitors and the zygote live in sessions of their own: lxpyd may stop or
crash and the containers keep running; on start lxpyd adopts every monitor
that answers on its socket.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import trio

from lxpy.build.rootfs import check_init, set_hostname_files
from lxpy.daemon import configcheck
from lxpy.daemon.devices.service import Devices
from lxpy.daemon.journal import Intent
from lxpy.daemon.ksm import Ksmd
from lxpy.daemon.monitors import Lines, monitor_request
from lxpy.daemon.networks import Networks
from lxpy.daemon.nics import joins_network
from lxpy.daemon.resources import Resources
from lxpy.daemon.security import Security
from lxpy.daemon.state import Daemon
from lxpy.daemon.table import RunInfo, StopAsked, Watch
from lxpy.errors import Busy, DaemonUnavailable, InvalidArgument, LxpyError, NotFound
from lxpy.kernel import systemd
from lxpy.kernel.cgroups import ContainerCgroup
from lxpy.kernel.hostlimits import raise_host_inotify
from lxpy.kernel.idranges import IdMap
from lxpy.kernel.inroot import Rootfs
from lxpy.model.config import Container
from lxpy.model.limits import KernelLimits
from lxpy.model.paths import rotated_log
from lxpy.model.state import State
from lxpy.model.template import Source, TemplateDef, find_template
from lxpy.runtime.control import check_reply
from lxpy.runtime.spec import LaunchSpec
from lxpy.runtime.zygote import SPAWN_TIMEOUT, encode_request, spawn_request, start_zygote
from lxpy.storage import prefetch

log = logging.getLogger("lxpyd.lifecycle")

DEFAULT_STOP_TIMEOUT = 30.0
# Beyond a stop's own timeout: the monitor's cgroup kill (5 s) and slack.
STOP_MARGIN = 15.0
# A console log past this size is rotated (to NAME.console.log.1) at start.
CONSOLE_LOG_MAX = 1024 * 1024
CONSOLE_TAIL = 256 * 1024
# The zygote makes a container's namespaces in milliseconds; its helper
# answers within 5 s or fails.
NAMESPACES_TIMEOUT = 15.0

# What the monitor reports, as the daemon's states.
_STATES = {
    "RUNNING": State.RUNNING,
    "FROZEN": State.FROZEN,
    "STOPPING": State.STOPPING,
    "REBOOTING": State.STARTING,
}


def _iso(ts: object) -> str:
    if not isinstance(ts, int | float) or ts <= 0:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


STOPPED_BY_LXPY = "stopped by lxpy"
RESTARTED_BY_LXPY = "restarted by lxpy"


def _exit_info(raw: object, asked: StopAsked | None = None) -> dict[str, object] | None:
    # The monitor's last_exit carries more (at, stopped, forced); the API
    # shows reason and detail. A stop that lxpy asked for says so: how init
    # ended says nothing then (the halt signal makes init call reboot(2),
    # which the kernel reports as a power-off from inside). `asked` is how
    # the stop was asked for, when this daemon asked.
    if not isinstance(raw, dict) or "reason" not in raw:
        return None
    if not raw.get("stopped"):
        return {"reason": raw["reason"], "detail": raw.get("detail", "")}
    detail = STOPPED_BY_LXPY
    if raw.get("forced"):
        if asked is None:
            detail += " (killed)"
        elif asked.force:
            detail += " (killed at once)"
        else:
            detail += f" (killed: still running after the {asked.grace:g} s timeout)"
    return {"reason": "stopped", "detail": detail}


class Lifecycle:
    """Starts, stops and follows the containers of daemon `d`, with the
    networks, ID ranges, limits and devices of its peers."""

    def __init__(
        self,
        d: Daemon,
        nursery: trio.Nursery,
        networks: Networks,
        security: Security,
        resources: Resources,
        devices: Devices,
        ksmd: Ksmd | None = None,
    ) -> None:
        self.d = d
        self.nursery = nursery
        self.networks = networks
        self.security = security
        self.resources = resources
        self.devices = devices
        # Runs ksmd after starts (setting `ksm`); None when off.
        self.ksmd = ksmd
        # Who is told of a start a client asked for (name) and of an end
        # lxpy did not ask for (name, the monitor's last_exit): the
        # restart policy (lxpy.daemon.autostart), through on_events().
        self._client_start: Callable[[str], None] = _ignore_start
        self._ended_hook: Callable[[str, Mapping[str, object] | None], None] = _ignore_end
        # What it holds per container is in the container table (entry
        # fields watch, run, last_exit, stop_asked); these read it.
        self.runs = d.table.watches
        self.last_exit = d.table.last_exits
        self._zygote_lock = trio.Lock()
        self._zygote: subprocess.Popen[bytes] | None = None
        # Parsed template definitions, valid while the files stay the same.
        self._template_key: tuple[tuple[str, int, int], ...] | None = None
        self._template_defs: dict[str, TemplateDef] = {}
        # One read-ahead at a time: they wait on the disk, not on the CPU.
        self._prefetch_limiter = trio.CapacityLimiter(1)

    def on_events(
        self,
        client_start: Callable[[str], None],
        ended: Callable[[str, Mapping[str, object] | None], None],
    ) -> None:
        """Have `client_start(name)` called when a client starts a
        container, and `ended(name, last_exit)` when one ended (STOPPED)
        with the monitor's last_exit."""
        self._client_start = client_start
        self._ended_hook = ended

    def set_last_exit(self, name: str, why: dict[str, object] | None) -> None:
        """Keep `why` as why container `name`'s init last ended (the API's
        last_exit); nothing is kept for a container deleted meanwhile."""
        entry = self.d.table.get(name)
        if entry is not None:
            entry.last_exit = why

    # -- paths -----------------------------------------------------------------
    @property
    def zygote_socket(self) -> Path:
        return self.d.settings.paths.run.zygote_socket

    def state_file(self, name: str) -> Path:
        return self.d.settings.paths.run.state_file(name)

    # -- the container object --------------------------------------------------
    def run_fields(self, name: str) -> dict[str, object]:
        """init_pid, started_at and last_exit of the API's container object."""
        info = self.d.running.get(name)
        return {
            "init_pid": info.init_pid if info else None,
            "started_at": (info.started_at or None) if info else None,
            "last_exit": self.last_exit.get(name),
        }

    # -- zygote ----------------------------------------------------------------
    def _zygote_alive(self) -> bool:
        if self._zygote is not None and self._zygote.poll() is not None:
            self._zygote = None  # reaped; a new one is started below
        try:
            spawn_request(self.zygote_socket, {"cmd": "ping"}, timeout=2)
            return True
        except (OSError, LxpyError):
            return False

    def _start_zygote(self) -> None:
        paths = self.d.settings.paths
        paths.logs.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.zygote_socket.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(paths.zygote_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            self._zygote = start_zygote(self.zygote_socket, stderr=fd, owner=os.getpid())
        finally:
            os.close(fd)
        paths.run.zygote_pid.write_text(f"{self._zygote.pid}\n")
        log.info("zygote started (pid %d) on %s", self._zygote.pid, self.zygote_socket)

    async def _zygote_call(self, req: dict[str, object], wait: float) -> dict[str, object]:
        # One request to the zygote. Only when it cannot be reached is it
        # (re)started, under a lock so one start serves every waiter.
        try:
            return await self._zygote_request(req, wait)
        except (ConnectionRefusedError, FileNotFoundError) as e:
            # Only "nobody listens": a timeout may mean a monitor is already
            # starting this container, and must not start a second one.
            log.info("zygote unreachable (%s); starting one", e.strerror or e)
        async with self._zygote_lock:
            if not await trio.to_thread.run_sync(self._zygote_alive):
                await trio.to_thread.run_sync(self._start_zygote)
        return await self._zygote_request(req, wait)

    async def _zygote_request(self, req: dict[str, object], wait: float) -> dict[str, object]:
        # On trio's own sockets, not a worker thread each: a spawn waits
        # until init runs, and fifty of them would queue behind trio's
        # thread limit. Shielded like the thread it replaces: once asked,
        # the answer is awaited (until `wait` seconds), so a monitor that starts
        # is never lost track of.
        with trio.CancelScope(shield=True, deadline=trio.current_time() + wait):
            stream = await trio.open_unix_socket(str(self.zygote_socket))
            async with stream:
                await stream.send_all(encode_request(req))
                buf = b""
                while b"\n" not in buf:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        raise LxpyError("the monitor ended before init ran (see lxpyd's log)")
                    buf += chunk
            return check_reply(json.loads(buf.partition(b"\n")[0]))
        # Only reached when the deadline passed.
        raise TimeoutError(f"the zygote did not answer {req.get('cmd')!r} within {wait:g} s")

    async def _spawn(self, spec: LaunchSpec) -> dict[str, object]:
        # The zygote forks and hands the connection to the new monitor at
        # once, so spawns run side by side.
        return await self._zygote_call({"cmd": "spawn", "spec": spec.to_json()}, SPAWN_TIMEOUT)

    async def _make_namespaces(self, userns: str, ids: IdMap | None, netns: str) -> None:
        """Have the zygote make and bind the container's user namespace (at
        `userns`, with `ids`; none when `userns` is empty) and its network
        namespace (at `netns`, owned by the user namespace; none when
        `netns` is empty).

        Raises:
            LxpyError: why they could not be made (neither is left bound).
        """
        req: dict[str, object] = {
            "cmd": "namespaces",
            "userns": userns,
            "uid_map": ids.uid_map() if ids else "",
            "gid_map": ids.gid_map() if ids else "",
            "netns": netns,
        }
        await self._zygote_call(req, NAMESPACES_TIMEOUT)

    # -- start -----------------------------------------------------------------
    def _find_template(self, name: str) -> TemplateDef:
        # find_template parses every definition; a start needs one, and they
        # rarely change: parse again only when a file's mtime, size or the
        # set of files changed.
        dirs = self.d.settings.template_dirs
        key = tuple(
            (str(f), st.st_mtime_ns, st.st_size)
            for d in dirs
            if d.is_dir()
            for f in sorted(d.glob("*.toml"))
            for st in (f.stat(),)
        )
        if self._template_key != key:
            # A race between worker threads at worst parses once more.
            self._template_defs = {}
            self._template_key = key
        if name not in self._template_defs:
            self._template_defs[name] = find_template(dirs, name)
        return self._template_defs[name]

    def _template(self, record: Container) -> TemplateDef | None:
        if record.template.startswith("@"):
            return self._image_defaults(record)
        try:
            return self._find_template(record.template)
        except (NotFound, InvalidArgument) as e:
            # Its defaults (init, signals) are only defaults: the launch spec's
            # own apply, and the config can name them.
            log.warning("container %s: template defaults unavailable: %s", record.name, e.message)
            return None

    def _image_defaults(self, record: Container) -> TemplateDef | None:
        # A container made from an image (lxpy.daemon.images): the defaults
        # its image found for its init, or those of the template it was
        # published from.
        meta = self.d.registry.image_meta(record.template[1:]) or {}
        defaults = meta.get("defaults")
        source = meta.get("template")
        if not defaults and isinstance(source, str) and not source.startswith("@"):
            try:
                return self._find_template(source)
            except (NotFound, InvalidArgument):
                return None
        got = defaults if isinstance(defaults, dict) else {}
        base = TemplateDef(record.template, "image", Source("image"))
        return replace(
            base,
            init=str(got.get("init", base.init)),
            halt_signal=str(got.get("halt_signal", base.halt_signal)),
            reboot_signal=str(got.get("reboot_signal", base.reboot_signal)),
        )

    def _spec(self, record: Container, defn: TemplateDef | None) -> LaunchSpec:
        c = record.config
        name = record.name
        tdefaults: dict[str, str] = {}
        if defn is not None:
            tdefaults = {
                "init": defn.init,
                "halt_signal": defn.halt_signal,
                "reboot_signal": defn.reboot_signal,
            }
        kw: dict[str, object] = {}
        for key in ("init", "halt_signal", "reboot_signal"):
            value = c.get(key, tdefaults.get(key))
            if value is not None:
                kw[key] = str(value)
        args = c.get("init.args")
        env = {
            k.removeprefix("environment."): str(v)
            for k, v in c.items()
            if k.startswith("environment.")
        }
        # systemd's container_uuid (and so /etc/machine-id on first boot)
        # must stay the same across starts: derive it from what identifies
        # this container on this daemon.
        ident = uuid.uuid5(
            uuid.NAMESPACE_URL, f"lxpy:{self.d.settings.root}:{name}:{record.created_at}"
        )
        return LaunchSpec(
            name=name,
            rootfs=str(self.d.backend.container_path(name)),
            control_socket=str(self.d.monitor_socket(name)),
            args=tuple(args) if isinstance(args, list) else (),
            env=env,
            hostname=str(c.get("hostname") or name),
            stop_timeout=DEFAULT_STOP_TIMEOUT,
            console_log=str(self.d.console_log(name)),
            state_file=str(self.state_file(name)),
            uuid=str(ident),
            cgroup_parent=self.d.cgroup_parent(name),
            scope=self.d.scope(name),
            **kw,  # type: ignore[arg-type]
        )

    def _prepare(self, record: Container) -> LaunchSpec:
        """The launch spec of `record` (its template's defaults looked up)
        and the host-side files of a start: run dir, console log, hostname
        files, a look at its init. Blocking: one worker trip for all of them."""
        spec = self._spec(record, self._template(record))
        run_dir = Path(spec.control_socket).parent
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        Path(spec.state_file).unlink(missing_ok=True)
        logf = Path(spec.console_log)
        logf.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if logf.exists() and logf.stat().st_size > CONSOLE_LOG_MAX:
            logf.replace(rotated_log(logf))
        spec.validate()
        kl = KernelLimits.from_config(record.config)
        for change in raise_host_inotify(kl.inotify_instances, kl.inotify_watches):
            log.info("container %s: raised the host's %s (limits.kernel.*)", record.name, change)
        with Rootfs(spec.rootfs, f"container {spec.name!r}") as root:
            set_hostname_files(root, spec.effective_hostname)
            check_init(root, spec.init)
        return spec

    async def start(self, name: str) -> bool:
        """Boot container `name`; returns once its init runs (RUNNING): True,
        or False when it was running already (nothing done, as `systemctl
        start` does nothing for a running unit).

        Raises:
            NotFound; Busy (frozen); LxpyError: why it did not start
            (nothing of the attempt is left behind).
        """
        async with self.d.table.lock(name):
            state = self.d.states.get(name)
            if name in self.runs and state == State.RUNNING:
                self.d.table.require(name)
                return False
            if state == State.FROZEN:
                raise Busy(f"container {name!r} is frozen", hint=f"thaw it: lxpy unfreeze {name}")
            self._client_start(name)
            await self._start_locked(name)
            return True

    async def start_locked(self, name: str) -> None:
        """start() for a caller that holds the container's lock."""
        await self._start_locked(name)

    async def _start_locked(self, name: str) -> None:
        d = self.d
        record = d.table.require(name)
        state = d.states.get(name)
        if state not in (State.STOPPED, State.ERROR) or name in self.runs:
            raise Busy(
                f"container {name!r} is already running ({state})",
                hint=f"`lxpy restart {name}` restarts it",
            )
        d.table.set_state(name, State.STARTING)
        # Each step that leaves something on the host registers its undo
        # beside it; a failure or a cancel runs them, last first, shielded.
        undo = Intent("start", None)
        try:
            # _prepare makes the run dir first: gone again whatever fails.
            undo.undo(
                lambda: d.files(_remove_run_dir, d.container_run_dir(name)), "remove its run dir"
            )
            spec = await d.files(self._prepare, record)
            # The read-ahead first: it runs beside everything below.
            if d.settings.read_ahead:
                self.nursery.start_soon(self._read_ahead, spec.rootfs, spec.init)
            # Its security settings checked once; unprivileged: its ID
            # range (picked now if it has none yet).
            sec = await self.security.for_start(record)
            record, ids = sec.record, sec.ids
            res = self.resources.launch_fields(name, record.config)
            spec = replace(spec, **res, **sec.fields)  # type: ignore[arg-type]
            # An unprivileged container on a network has its user namespace
            # made and pinned first, to own the network namespace the veths
            # go into. On no network the launch makes it (one step less).
            # Unpinned again on failure (idempotent: pinned here, or by the
            # zygote in make_ns).
            undo.undo(lambda: d.files(self.security.unpin_userns, name), "unpin its userns")
            userns = ""
            if ids is not None and joins_network(record.config):
                userns = await d.files(self.security.prepare_userns, name)
            # Privileged: under the AppArmor profile where the host has one.
            spec = replace(spec, userns=userns, apparmor=d.apparmor if ids is None else "")

            # Both namespaces in one zygote request, the network namespace
            # owned by the user namespace; the veths go in afterwards.
            async def make_ns(netns: Path) -> None:
                await self._make_namespaces(userns, ids, str(netns))

            # Devices: what the launch mounts, and host state they take.
            plan = await self.devices.plan_start(record)

            async def release_devices() -> None:
                self.devices.active.pop(name, None)
                await self.devices.undo_start(plan)

            undo.undo(release_devices, "release its devices")
            spec = replace(spec, mounts=tuple(plan.mounts))
            handle = await self.networks.attach(
                name, record.config, userns, make_ns=make_ns, security=sec.settings
            )
            undo.undo(lambda: self.networks.detach(name), "detach its network")
            spec = replace(spec, netns=handle.path)
            reply = await self._spawn(spec)
        except BaseException as e:
            await undo.revert()
            msg = e.message if isinstance(e, LxpyError) else f"{type(e).__name__}: {e}"
            self.set_last_exit(name, {"reason": "error", "detail": msg})
            d.table.set_state(name, State.STOPPED)
            raise
        sock = Path(spec.control_socket)
        entry = d.table.get(name)
        assert entry is not None  # its lock is held: it cannot be deleted
        entry.run = RunInfo(
            init_pid=int(reply["init_pid"]),  # type: ignore[call-overload]
            monitor_pid=int(reply["monitor_pid"]),  # type: ignore[call-overload]
            started_at=_iso(datetime.now(UTC).timestamp()),
            socket=sock,
        )
        entry.last_exit = None
        d.table.set_state(name, State.RUNNING)
        if self.ksmd is not None:
            self.ksmd.kick()
        run = Watch(sock)
        entry.watch = run
        await self.nursery.start(self._watch, name, run)
        info = d.running.get(name)
        if info is not None:
            await self.devices.started(name, info.init_pid)
        await self.resources.rebalance()

    async def _read_ahead(self, rootfs: str, init: str) -> None:
        """Have the kernel read init and its libraries into the page cache
        while the start goes on (lxpy.storage.prefetch): on a fresh
        snapshot that takes ~12 ms off the time to init's first line."""
        try:
            files = await trio.to_thread.run_sync(
                prefetch.warm, rootfs, init, limiter=self._prefetch_limiter, abandon_on_cancel=True
            )
        except Exception as e:  # a hint: nothing here may disturb the start or lxpyd
            log.warning("read-ahead of %s in %s failed: %s", init, rootfs, e)
            return
        log.debug("read ahead %d files for %s in %s", len(files), init, rootfs)

    # -- following a monitor ---------------------------------------------------
    async def _watch(
        self,
        name: str,
        run: Watch,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        started = False
        try:
            try:
                stream = await trio.open_unix_socket(str(run.socket))
            except OSError:
                stream = None  # it ended already: the state file says how
            if stream is not None:
                async with stream:
                    await stream.send_all(b'{"cmd": "subscribe"}\n')
                    lines = Lines(stream)
                    task_status.started()
                    started = True
                    while True:
                        try:
                            msg = await lines.next()
                        except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
                            msg = None
                        if msg is None:
                            break
                        if isinstance(msg, dict):
                            self._apply(name, msg)
                            run.set_ready(msg.get("ready") is True)
        except Exception:
            log.exception("container %s: lost track of its monitor", name)
        finally:
            if not started:
                task_status.started()
        # Not reached on cancellation (lxpyd stopping): the container keeps
        # running and the next lxpyd adopts it.
        with trio.CancelScope(shield=True):
            try:
                await self._ended(name, run)
            except Exception:
                log.exception("container %s: cleaning up after its end failed", name)
            finally:
                run.ended.set()
                run.changed.set()

    def _apply(self, name: str, status: dict[str, object]) -> None:
        """A status or state event from the monitor."""
        d = self.d
        new = _STATES.get(str(status.get("state")))
        entry = d.table.get(name)
        if new is None or entry is None or entry.state is None:
            return
        if status.get("last_exit") is not None:
            # After a reboot inside: why the previous init ended.
            entry.last_exit = _exit_info(status.get("last_exit"))
        info = entry.run
        pid = status.get("init_pid")
        if info is not None and isinstance(pid, int) and pid > 0 and pid != info.init_pid:
            # A reboot: a new init (and a new pid namespace) under the same monitor.
            entry.run = RunInfo(
                init_pid=pid,
                monitor_pid=info.monitor_pid,
                started_at=_iso(status.get("started_at")) or info.started_at,
                socket=info.socket,
            )
            # Its monitor re-made the disks it was started with: the ones
            # changed live since are made right again.
            self.nursery.start_soon(self.devices.rebooted, name, pid)
        if entry.state == State.STOPPING and new != State.STOPPING:
            return  # a stop is under way: only its end counts
        d.table.set_state(name, new)

    async def _ended(self, name: str, run: Watch) -> None:
        d = self.d
        data = await d.files(_read_json, self.state_file(name))
        info, asked = None, None
        entry = d.table.get(name)
        if entry is not None:
            info, asked = entry.run, entry.stop_asked
            entry.run, entry.stop_asked = None, None
        if data is not None and data.get("state") == "STOPPED":
            new = State.STOPPED
            self.set_last_exit(name, _exit_info(data.get("last_exit"), asked))
            lost = False
        else:
            new = State.ERROR
            pid = info.monitor_pid if info else "?"
            self.set_last_exit(
                name,
                {
                    "reason": "monitor-lost",
                    "detail": f"its monitor (pid {pid}) ended without saying why init ended; "
                    "the container was killed with it",
                },
            )
            lost = True
            # Init died with its monitor (PDEATHSIG); whatever came in from
            # outside (nsenter) and the cgroup directories go too.
            await trio.to_thread.run_sync(_remove_cgroups, self.d.cgroup(name))
        await self.networks.detach(name)
        await self.devices.stopped(name)
        await d.files(self.security.unpin_userns, name)
        if not lost:
            await d.files(_remove_run_dir, d.container_run_dir(name))
        entry = d.table.get(name)
        if entry is not None and entry.watch is run:
            entry.watch = None
        if name in d.states:
            d.table.set_state(name, new)
        log.info("container %s ended: %s", name, self.last_exit.get(name))
        await self.resources.rebalance()
        if not lost and name in d.states:
            # boot.restart: started again, or left in ERROR with the reason.
            raw = data.get("last_exit") if data else None
            self._ended_hook(name, raw if isinstance(raw, dict) else None)

    # -- stop ------------------------------------------------------------------
    async def stop(
        self, name: str, grace: float = DEFAULT_STOP_TIMEOUT, force: bool = False
    ) -> None:
        """Stop container `name`: the halt signal, then after `grace` s (at once
        with `force`) every process of it is killed. Returns once STOPPED.

        Raises:
            NotFound; InvalidArgument: it is not running; LxpyError: the
            monitor did not answer in time.
        """
        async with self.d.table.lock(name):
            await self.stop_locked(name, grace, force)

    async def stop_locked(self, name: str, grace: float, force: bool) -> None:
        """stop() for a caller that holds the container's lock."""
        d = self.d
        d.table.require(name)
        run = self.runs.get(name)
        if run is None:
            raise InvalidArgument(
                f"container {name!r} is not running",
                hint=f"its state is {d.states.get(name)}; start it with: lxpy start {name}",
            )
        d.table.set_state(name, State.STOPPING)
        entry = d.table.get(name)
        assert entry is not None  # its lock is held: it cannot be deleted
        entry.stop_asked = StopAsked(force, grace)
        wait = (0 if force else grace) + STOP_MARGIN
        try:
            if force:
                await monitor_request(run.socket, "kill", wait=wait)
            else:
                await monitor_request(run.socket, "stop", wait=wait, timeout=grace)
        except DaemonUnavailable:
            pass  # it ended on its own meanwhile; the watcher has the details
        with trio.move_on_after(STOP_MARGIN):
            await run.ended.wait()
        if not run.ended.is_set():
            raise LxpyError(
                f"container {name!r} did not stop within {grace + STOP_MARGIN:g} s",
                hint="see lxpyd's log; `lxpy stop --force` kills it",
            )

    async def restart(self, name: str, grace: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Stop (if running) and start container `name`. What its config
        would make the start refuse is found before it is stopped.

        Raises:
            as stop() and start(); InvalidArgument, Busy: a config the start
            would refuse (the container is left running).
        """
        async with self.d.table.lock(name):
            running = name in self.runs
            if running:
                await self.check_start(name)
                await self.stop_locked(name, grace, False)
            await self._start_locked(name)
            if running:
                self.restarted(name, RESTARTED_BY_LXPY)

    async def check_start(self, name: str, snapshot: str | None = None) -> None:
        """What a start of container `name` would refuse in its config,
        found without touching it (before a restart stops it); `snapshot`:
        with that snapshot's files, which a restore brings back.

        Raises:
            NotFound; InvalidArgument, Busy: naming the key and what is wrong.
        """
        record = self.d.table.require(name)
        init = await self.d.files(lambda: self._spec(record, self._template(record)).init)
        await configcheck.check_start(self.d, self.networks, name, record.config, init, snapshot)

    def restarted(self, name: str, detail: str) -> None:
        """Record that lxpy stopped and started container `name` again
        (its last_exit while it runs, as a reboot inside records one)."""
        self.set_last_exit(name, {"reason": "restarted", "detail": detail})

    # -- freeze ----------------------------------------------------------------
    async def freeze(self, name: str, on: bool) -> None:
        """Freeze (on) or thaw container `name`.

        Raises:
            NotFound; InvalidArgument: not running; Busy: the monitor refused.
        """
        async with self.d.table.lock(name):
            d = self.d
            d.table.require(name)
            run = self.runs.get(name)
            if run is None or d.states.get(name) not in (State.RUNNING, State.FROZEN):
                raise InvalidArgument(
                    f"container {name!r} is not running",
                    hint=f"its state is {d.states.get(name)}",
                )
            await monitor_request(run.socket, "freeze" if on else "thaw")
            d.table.set_state(name, State.FROZEN if on else State.RUNNING)

    # -- console log -----------------------------------------------------------
    async def console_log(self, name: str) -> str:
        """The console output kept since boot (the monitor's ring buffer), or
        the tail of the console log file when it is not running."""
        self.d.table.require(name)
        run = self.runs.get(name)
        if run is not None:
            try:
                reply = await monitor_request(run.socket, "console-log")
                return str(reply.get("text", ""))
            except DaemonUnavailable:
                pass
        return await self.d.files(_tail, self.d.console_log(name), CONSOLE_TAIL)

    # -- deleting and renaming -------------------------------------------------
    async def forget(self, name: str) -> None:
        """Remove what a deleted container left here (run dir, console logs)."""

        def work() -> None:
            _remove_run_dir(self.d.container_run_dir(name))
            log = self.d.console_log(name)
            for p in (log, rotated_log(log)):
                p.unlink(missing_ok=True)

        await self.d.files(work)

    # -- adoption --------------------------------------------------------------
    async def adopt_all(self) -> None:
        """Find the containers that run (their monitors answer) and follow
        them again; mark those whose monitor died ERROR."""
        for name in sorted(self.d.records):
            try:
                await self._adopt(name)
            except Exception:
                log.exception("container %s: adoption failed", name)

    async def _into_scope(self, name: str, monitor: int) -> None:
        """Move the monitor of a container that an lxpyd before scopes
        started out of lxpyd's unit, into the container's scope: then
        lxpy.service holds lxpyd alone. Its cgroups stay where they are
        until it starts again."""
        scope = self.d.scope(name)
        if not scope or not monitor:
            return
        try:
            where = await self.d.files(systemd.unit_cgroup, monitor)
            if where != await self.d.files(systemd.unit_cgroup, os.getpid()):
                return
            await self.d.files(systemd.start_scope, scope, monitor, systemd.describe(name))
        except (OSError, LxpyError) as e:
            log.warning("container %s: its monitor stays in lxpyd's unit: %s", name, e)
        else:
            log.info("container %s: its monitor moved into %s", name, scope)

    async def _adopt(self, name: str) -> None:
        d = self.d
        sock = d.monitor_socket(name)
        status: dict[str, object] | None = None
        if await d.files(sock.exists):
            try:
                status = await monitor_request(sock, "status", wait=5)
            except LxpyError as e:
                log.warning("container %s: its monitor socket does not answer: %s", name, e.message)
        entry = d.table.get(name)
        assert entry is not None  # adopt_all() goes through the records
        if status is not None and status.get("state") in _STATES:
            info = RunInfo(
                init_pid=int(status.get("init_pid") or 0),  # type: ignore[call-overload]
                monitor_pid=int(status.get("monitor_pid") or 0),  # type: ignore[call-overload]
                started_at=_iso(status.get("started_at")),
                socket=sock,
            )
            entry.run = info
            d.table.found(name, _STATES[str(status["state"])])
            if int(status.get("boots") or 0) > 1:  # type: ignore[call-overload]
                entry.last_exit = _exit_info(status.get("last_exit"))
            run = Watch(sock, ready=status.get("ready") is True)
            entry.watch = run
            await self.nursery.start(self._watch, name, run)
            await self.devices.adopted(name, info.init_pid)
            log.info("container %s: adopted (init %s)", name, info.init_pid)
            await self._into_scope(name, info.monitor_pid)
            return
        data = await d.files(_read_json, self.state_file(name))
        if data is None:
            if self.networks.nics(name) or name in self.networks.attached:
                await self.networks.detach(name)
            await d.files(self.security.unpin_userns, name)
            return
        if data.get("state") == "STOPPED":
            entry.last_exit = _exit_info(data.get("last_exit"))
            await d.files(_remove_run_dir, d.container_run_dir(name))
        else:
            d.table.found(name, State.ERROR)
            entry.last_exit = {
                "reason": "monitor-lost",
                "detail": f"its monitor (pid {data.get('monitor_pid', '?')}) is gone; "
                f"the container was {data.get('state', 'running')} when it was last seen",
            }
            await trio.to_thread.run_sync(_remove_cgroups, self.d.cgroup(name))
        await self.networks.detach(name)
        await d.files(self.security.unpin_userns, name)


def _ignore_start(name: str) -> None:
    pass


def _ignore_end(name: str, last_exit: Mapping[str, object] | None) -> None:
    pass


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _remove_run_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    # The parent (containers/) goes when empty, so a daemon with nothing
    # running leaves no run dir behind.
    try:
        path.parent.rmdir()
    except OSError:
        pass


def _remove_cgroups(cg: ContainerCgroup) -> None:
    # Whatever the container left in its cgroups, its end is still
    # recorded: a failure here is logged, never a reason to stay STOPPING.
    name = cg.name
    try:
        cg.kill(timeout=5)
        cg.remove(timeout=5)
    except LxpyError as e:
        log.warning("container %s: %s", name, e.message)
    except OSError as e:
        log.warning("container %s: removing its cgroups: %s", name, e)


def _tail(path: Path, size: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
