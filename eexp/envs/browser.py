"""A managed headless Chromium, driven through ChromeDriver (Selenium): what the `miniwob` environment runs in.

One `Browser` is one ChromeDriver process and the Chromium it starts, owned by one environment instance (so one per
`-j` worker), started on first use and reused for every episode after. Nothing reaches outside the machine:

- ChromeDriver is the system one (`/usr/bin/chromedriver`, or `$EEXP_CHROMEDRIVER`), started by eexp itself on a
  loopback port, so Selenium Manager (which would look for drivers on the internet) never runs; `SE_OFFLINE` is
  set anyway.
- Chromium runs with the flags that keep it off the network (`--disable-background-networking`,
  `--disable-component-update`, `--disable-sync`, ...) and a fresh profile in a temporary folder.

Every process of a browser is killed, whatever happens to eexp:

- `close()` kills ChromeDriver's process group (Chromium and its helpers are in it) and every process whose command
  line names the browser's temporary folder (the crash handler starts a session of its own; its database is put in
  that folder through XDG_CONFIG_HOME), then deletes the folder. It does not block and works twice.
- An exiting interpreter closes every browser still open (atexit); Ctrl-C takes that path too.
- `kill -9` of eexp (or of the worker holding the browser) runs no Python code: a small reaper process
  (`python -m eexp.envs.browser --reap`, its own session) waits on a pipe from the owner; the owner's death closes
  the pipe, and the reaper does what close() does.

Chromium processes that exited are reparented to PID 1; where PID 1 does not reap (a container's init), they stay as
zombies (`<defunct>`): dead, holding no memory. `live_processes(tag)` counts only live ones.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--hide-scrollbars",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
)
INSTALL_HINT = "./install.sh --browser (as root: apt-get install chromium chromium-driver)"
TAG_PREFIX = "eexp-browser-"
START_TIMEOUT = 30.0

_open: "weakref.WeakSet[Browser]" = weakref.WeakSet()


class BrowserMissing(Exception):
    """Chromium, ChromeDriver or Selenium is not installed: one line that says how to install it."""


def find_executables() -> tuple[str, str]:
    """(chromium, chromedriver) paths, from $EEXP_CHROMIUM / $EEXP_CHROMEDRIVER or PATH; BrowserMissing names what
    is missing and the install command."""
    chromium = os.environ.get("EEXP_CHROMIUM") or next(
        (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None
    )
    driver = os.environ.get("EEXP_CHROMEDRIVER") or shutil.which("chromedriver")
    missing = [
        name
        for name, path in (("chromium", chromium), ("chromedriver", driver))
        if not path or not os.access(path, os.X_OK)
    ]
    if missing:
        raise BrowserMissing(
            f"no {' and no '.join(missing)} found (EEXP_CHROMIUM / EEXP_CHROMEDRIVER or PATH); "
            f"install them: {INSTALL_HINT}"
        )
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_naming(tag: str) -> list[int]:
    """Live processes whose command line contains `tag` (the browser's temporary folder)."""
    found = []
    needle = tag.encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                if needle in f.read():
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return "gone"


def live_processes(tag: str = TAG_PREFIX) -> list[int]:
    """Live (not zombie) processes of eexp's browsers (all of them by default; one by its folder)."""
    return [p for p in _processes_naming(tag) if _state(p) not in ("Z", "X", "gone")]


def kill_browser(pgid: int | None, folder: str) -> None:
    """Kill a browser's processes (ChromeDriver's process group, then anything naming its folder) and delete the
    folder. Used by close() and by the reaper."""
    if pgid:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for _ in range(3):  # a process forked while the first ones were being killed
        pids = [p for p in _processes_naming(folder) if _state(p) not in ("Z", "X", "gone")]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.05)
    shutil.rmtree(folder, ignore_errors=True)


class Browser:
    """One ChromeDriver + Chromium, started by start() (not by the constructor) and killed by close()."""

    def __init__(self, window: tuple[int, int] = (800, 600)):
        self.window = window
        self.driver = None  # selenium WebDriver, once started
        self.folder: str | None = None
        self._service: subprocess.Popen | None = None
        self._reaper: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.driver is not None and self._service is not None and self._service.poll() is None

    def start(self):
        """Start the browser (if it is not running) and return its WebDriver."""
        if self.running:
            return self.driver
        self.close()
        chromium, chromedriver = find_executables()
        try:
            from selenium import webdriver
        except ImportError:
            raise BrowserMissing("selenium is not installed: pip install 'eexp[miniwob]'") from None
        os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never look online
        os.environ.setdefault("SE_AVOID_STATS", "true")
        self.folder = tempfile.mkdtemp(prefix=TAG_PREFIX)
        port = _free_port()
        env = {
            **os.environ,
            "XDG_CONFIG_HOME": os.path.join(self.folder, "config"),
            "XDG_CACHE_HOME": os.path.join(self.folder, "cache"),
        }
        self._service = subprocess.Popen(
            # no --allowed-ips: with it chromedriver listens on every interface; without, on loopback only
            [chromedriver, f"--port={port}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        self._reaper = subprocess.Popen(
            [sys.executable, "-m", "eexp.envs.browser", "--reap", str(self._service.pid), self.folder],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _open.add(self)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if self._service.poll() is not None or time.monotonic() > deadline:
                    code = self._service.poll()
                    self.close()
                    raise RuntimeError(f"chromedriver did not start (exit status {code})") from None
                time.sleep(0.05)
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={os.path.join(self.folder, 'profile')}")
        options.add_argument(f"--window-size={self.window[0]},{self.window[1]}")
        try:
            self.driver = webdriver.Remote(command_executor=f"http://127.0.0.1:{port}", options=options)
            # ChromeDriver's DevTools endpoint (webdriver.Chrome has it; Remote, which we need to start the driver
            # ourselves, does not register it)
            self.driver.command_executor._commands["executeCdpCommand"] = (
                "POST",
                "/session/$sessionId/goog/cdp/execute",
            )
            self.emulate_focus()
        except Exception:
            self.close()
            raise
        return self.driver

    def emulate_focus(self) -> None:
        """Make the page behave as if its window had the focus. A headless window never has it, so element.focus()
        moves document.activeElement but fires no `focus` event, which some pages wait for (MiniWoB's
        focus-text)."""
        self.driver.execute(
            "executeCdpCommand", {"cmd": "Emulation.setFocusEmulationEnabled", "params": {"enabled": True}}
        )

    def close(self) -> None:
        """Kill every process of this browser and delete its folder; safe at any point and twice."""
        self.driver = None  # no quit(): it could block on a hung driver; the profile is thrown away anyway
        service, self._service = self._service, None
        reaper, self._reaper = self._reaper, None
        if self.folder is not None:
            kill_browser(service.pid if service is not None else None, self.folder)
            self.folder = None
        for proc in (service, reaper):
            if proc is None:
                continue
            if proc is reaper and proc.stdin is not None:
                try:
                    proc.stdin.close()  # the reaper finds nothing left to kill and exits
                except OSError:
                    pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _open.discard(self)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


@atexit.register
def _close_all() -> None:
    for browser in list(_open):
        try:
            browser.close()
        except Exception:
            pass


def _reap(pgid: int, folder: str) -> None:
    """The reaper: wait until the owner's end of stdin closes (it exited or was killed), then kill the browser."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the owner; the owner's exit is our signal
    try:
        while sys.stdin.buffer.read(65536):
            pass
    except OSError:
        pass
    kill_browser(pgid, folder)


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--reap":
    _reap(int(sys.argv[2]), sys.argv[3])
elif __name__ == "__main__":
    sys.exit("usage: python -m eexp.envs.browser --reap PGID FOLDER (started by eexp.envs.browser.Browser)")
