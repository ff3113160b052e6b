"""Client side of a monitor's control socket (sync, stdlib only).

The protocol: the client writes one JSON object per line, `{"cmd": ...}`
plus arguments, and reads one JSON object per line back:
`{"ok": true, ...}` or `{"ok": false, "error": {"code", "message", "hint"}}`.

Commands:

* `status`: name, state (RUNNING, FROZEN, STOPPING, REBOOTING, STOPPED),
  init_pid (host pid namespace), monitor_pid, started_at (epoch seconds),
  boots, last_exit ({reason: reboot | poweroff | killed | exited | error,
  detail, at, stopped?, forced?}), cgroup (its directories), console.
* `stop` {signal?, timeout?}: send the halt signal to init; after `timeout`
  seconds kill everything in the container's cgroups. Answered once init
  has ended, with last_exit; the monitor then exits.
* `kill`: kill everything at once; answered like `stop`.
* `reboot` {signal?}: send the reboot signal to init; answered at once.
* `freeze`, `thaw`.
* `console-log` {max?}: the last bytes of console output, as text.
* `attach` {tty?}: the answer carries a pty master (SCM_RIGHTS): tty 0 is
  the console, 1..N the ttys. While a console attach's connection stays
  open the monitor does not read (nor log) the console.
* `exec` {command, env?, cwd?, user?, tty?, width?, height?} with
  SCM_RIGHTS descriptors: stdin, stdout and stderr, or with `tty` one unix
  socket on which the command's pty master (from the container's devpts)
  comes back. The command is forked into the container (every namespace
  and cgroup; see attach.py). Answered `{"ok": true, "pid"}` once it is
  exec'd (or the set-up error), then `{"event": "exit", "code": N}`
  (128+signal when killed) when it ends. Closing the connection before
  that kills it.
* `subscribe`: answered with the status, then one `{"event": "state", ...}`
  line per state change until the connection closes.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

from lxpy.errors import DaemonUnavailable, LxpyError, from_json


class MonitorClient:
    """Talks to one monitor's control socket; one connection per request."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    def _connect(self, timeout: float | None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.path)
        except OSError as e:
            sock.close()
            raise DaemonUnavailable(
                f"no monitor answers on {self.path}: {e.strerror or e}",
                hint="the container is probably not running",
            ) from None
        return sock

    @staticmethod
    def _readline(sock: socket.socket, buf: bytearray) -> dict[str, object]:
        while b"\n" not in buf:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise gone()
            buf += chunk
        line, _, rest = bytes(buf).partition(b"\n")
        buf[:] = rest
        return check_reply(json.loads(line))

    def request(self, cmd: str, wait: float | None = None, **args: object) -> dict[str, object]:
        """Send one command and return its answer.

        Args:
            cmd: the command (see the module docstring).
            wait: seconds to wait for the answer (default: the client's
                timeout); `stop` needs more than its own `timeout` argument.
            args: the command's arguments.

        Raises:
            DaemonUnavailable: when nothing listens on the socket, or the
                monitor ended before it answered.
            LxpyError (or a subclass): the monitor's error, or a timeout.
        """
        sock = self._connect(self.timeout if wait is None else wait)
        try:
            sock.sendall((json.dumps({"cmd": cmd, **args}) + "\n").encode())
            return self._readline(sock, bytearray())
        except BrokenPipeError:
            raise gone(cmd) from None
        except TimeoutError:
            raise LxpyError(f"the monitor did not answer {cmd!r} in time") from None
        finally:
            sock.close()

    def attach(self, tty: int = 0) -> tuple[socket.socket, int]:
        """Get the console (tty 0) or tty N pty master.

        Returns:
            The connection (keep it open while attached; closing it hands the
            console back to the monitor's log) and the master fd (the
            caller owns and closes it).

        Raises:
            DaemonUnavailable, LxpyError: as request().
        """
        sock = self._connect(self.timeout)
        try:
            sock.sendall((json.dumps({"cmd": "attach", "tty": tty}) + "\n").encode())
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, 65536, 1)
            except ConnectionResetError:
                data, fds = b"", []
            if not data:
                raise gone()
            reply = check_reply(json.loads(data.partition(b"\n")[0]))
            if not fds:
                raise LxpyError(f"the monitor sent no terminal: {reply}")
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return sock, fds[0]

    def subscribe(self) -> Iterator[dict[str, object]]:
        """The current status, then every state change until the monitor exits."""
        sock = self._connect(None)
        try:
            sock.sendall(b'{"cmd": "subscribe"}\n')
            buf = bytearray()
            while True:
                try:
                    yield self._readline(sock, buf)
                except LxpyError:
                    return
        finally:
            sock.close()


def gone(cmd: str = "") -> DaemonUnavailable:
    """The error for a monitor that closed the connection without answering:
    one that ends (its container stopped) does so with requests unanswered."""
    what = f" {cmd!r}" if cmd else ""
    return DaemonUnavailable(
        f"the monitor closed the connection before answering{what}",
        hint="the container has probably just stopped",
    )


def check_reply(reply: object) -> dict[str, object]:
    if not isinstance(reply, dict):
        raise LxpyError(f"the monitor answered something that is not an object: {reply!r}")
    if reply.get("ok") is False:
        err = reply.get("error")
        raise from_json(err if isinstance(err, dict) else {"message": str(err)})
    return reply
