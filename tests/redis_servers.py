"""Redis servers the tests start themselves on loopback ports, and the URLs of those they use.

:func:`cluster_url` starts a real three-master Redis Cluster on first use and returns a
``redis+cluster://`` URL. pytest-xdist workers of one run (same ``PYTEST_XDIST_TESTRUNUID``)
share one cluster: a file lock guards a state file holding the servers' ports, process ids
and the worker pids using them. Each process removes itself when it exits; the last one stops
the servers by process id and removes their folder. A server left by a run that died is
stopped by the next run that finds its state file with no live user.

``SAVEGAME_TEST_REDIS_CLUSTER_URL`` names an existing cluster instead (:func:`server_url`
then starts nothing).

:func:`lossy_cluster` starts a cluster whose clients reach it through proxies that can lose
a reply. :func:`tls_server` and :func:`tls_cluster` start a standalone server and a 3-master cluster
that speak only TLS, with certificates from a certificate authority made for the test.
:func:`plain_server` and :func:`own_cluster` start a standalone server and a cluster for tests
that would disturb the shared ones.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from tests.lossy_proxy import LossyProxy

MASTERS = 3
START_TIMEOUT = 30.0
"""Seconds the cluster gets to start, form and report ``cluster_state:ok``."""

LOCK = str(Path(tempfile.gettempdir()) / "savegame-redis-cluster.lock")
"""One lock for every run's state file: runs at the same time take turns to start or stop."""

_url: str | None = None


def cluster_url() -> str:
    """The URL of a running 3-master cluster, starting one if this run has none yet.

    Raises:
        RuntimeError: when ``redis-server`` is not installed or the cluster does not form in
            time (the servers started are stopped again).
    """
    global _url
    if _url is None:
        _url = _join()
    return _url


def _run_dir() -> Path:
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"solo-{os.getpid()}"
    return Path(tempfile.gettempdir()) / f"savegame-redis-cluster-{run}"


def _join() -> str:
    base = _run_dir()
    with FileLock(LOCK, timeout=START_TIMEOUT * 2):
        state = _load(base)
        if state is None or not all(_alive(pid) for pid in state["pids"]):
            if state is not None:
                stop(state, base)
            state = _start(base)
        state["users"] = [pid for pid in state["users"] if _alive(pid)] + [os.getpid()]
        _save(base, state)
    atexit.register(_leave, base)
    return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in state["ports"])


def _leave(base: Path) -> None:
    with FileLock(LOCK, timeout=START_TIMEOUT * 2):
        state = _load(base)
        if state is None:
            return
        state["users"] = [p for p in state["users"] if p != os.getpid() and _alive(p)]
        if state["users"]:
            _save(base, state)
        else:
            stop(state, base)


def _load(base: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((base / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return state


def _save(base: Path, state: dict[str, Any]) -> None:
    (base / "state.json").write_text(json.dumps(state))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def free_ports(count: int) -> list[int]:
    """Ports whose cluster bus port (+10000) is free too."""
    ports: list[int] = []
    for _ in range(100 * count):
        if len(ports) == count:
            return ports
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    if len(ports) == count:
        return ports
    raise RuntimeError(f"found no {count} free loopback ports with free bus ports")


def _start(
    base: Path,
    tls: dict[str, Path] | None = None,
    announce: Callable[[int], int] | None = None,
) -> dict[str, Any]:
    """Starts the servers in ``base`` and forms the cluster; ``tls``: speaking TLS only,
    with the files of :func:`_tls_files`; ``announce(port)``: the port a node tells clients
    to reach it at, instead of its own."""
    server = shutil.which("redis-server")
    found = shutil.which("redis-cli")
    if server is None or found is None:
        raise RuntimeError("redis-server and redis-cli are needed to start a Redis Cluster")
    cli = [found] if tls is None else [found, "--tls", "--cacert", str(tls["ca"])]
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    ports = free_ports(MASTERS)
    pids = []
    for port in ports:
        folder = base / str(port)
        folder.mkdir()
        options = ["--port", str(port)]
        if tls is not None:
            options = ["--port", "0", "--tls-port", str(port), "--tls-cluster", "yes"]
            options += _tls_options(tls)
        if announce is not None:
            options += ["--cluster-announce-ip", "127.0.0.1"]
            options += ["--cluster-announce-port", str(announce(port))]
            options += ["--cluster-announce-bus-port", str(port + 10000)]
        options += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        options += ["--cluster-node-timeout", "5000"]
        pids.append(spawn(server, folder, options))
    state: dict[str, Any] = {"ports": ports, "pids": pids, "users": []}
    _save(base, state)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        for port in ports:
            wait_until(lambda p=port: _ask(cli, p, "PING") == "PONG", deadline)
        nodes = [f"127.0.0.1:{p}" for p in ports]
        subprocess.run(
            [*cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT,
        )
        for port in ports:
            wait_until(
                lambda p=port: "cluster_state:ok" in _ask(cli, p, "CLUSTER", "INFO"), deadline
            )
    except BaseException:
        stop(state, base)
        raise
    return state


def spawn(server: str, folder: Path, options: list[str]) -> int:
    """Starts ``redis-server`` on loopback, without persistence, working in ``folder``.

    Returns its process id; its output goes to ``folder/server.log``.
    """
    command = [server, "--bind", "127.0.0.1", "--dir", str(folder), "--save", ""]
    command += ["--appendonly", "no", *options]
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - the server keeps writing it
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return proc.pid


def _ask(cli: list[str], port: int, *command: str) -> str:
    done = subprocess.run(
        [*cli, "-h", "127.0.0.1", "-p", str(port), *command],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    )
    return done.stdout.strip()


def wait_until(ready: Any, deadline: float) -> None:
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError("the Redis servers did not come up in time")
        time.sleep(0.1)


def stop(state: dict[str, Any], base: Path) -> None:
    """Stops the servers by process id, waiting (bounded) for them to go, and removes the folder."""
    for pid in state["pids"]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for pid in state["pids"]:
        while _alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            _reap(pid)
    shutil.rmtree(base, ignore_errors=True)


def _reap(pid: int) -> None:
    """Collects a server that is our own child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _tls_files(folder: Path) -> dict[str, Path]:
    """A certificate authority made here (``ca``) and a server certificate it signed for
    ``127.0.0.1`` and ``localhost`` (``cert``, ``key``), as PEM files in ``folder``."""
    import trustme

    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1", "localhost")
    files = {name: folder / f"{name}.pem" for name in ("ca", "cert", "key")}
    authority.cert_pem.write_to_path(str(files["ca"]))
    issued.cert_chain_pems[0].write_to_path(str(files["cert"]))
    issued.private_key_pem.write_to_path(str(files["key"]))
    return files


def _tls_options(files: dict[str, Path]) -> list[str]:
    options = ["--tls-cert-file", str(files["cert"]), "--tls-key-file", str(files["key"])]
    return [*options, "--tls-ca-cert-file", str(files["ca"]), "--tls-auth-clients", "no"]


@contextlib.contextmanager
def _one_server(
    folder: Path, options: Callable[[int], list[str]], client: dict[str, Any], what: str
) -> Iterator[tuple[int, Callable[[], None]]]:
    """One ``redis-server`` of the tests' own on a free loopback port, started with
    ``options(port)`` and answering a client made with ``client``; yields the port and a
    function that restarts the server (SIGTERM, then started again on that port, with
    none of its data: it keeps nothing on disk), and stops it by process id on leaving.

    Raises:
        RuntimeError: when ``redis-server`` is missing, does not start (``what`` says what
            it needs), or does not answer in time.
    """
    import redis

    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError(f"redis-server is needed to start {what}")
    (port,) = free_ports(1)
    state: dict[str, Any] = {"pids": [spawn(server, folder, options(port))]}

    def answers() -> bool:
        _reap(state["pids"][0])
        if not _alive(state["pids"][0]):
            log = (folder / "server.log").read_text(errors="replace")
            raise RuntimeError(f"redis-server did not start as {what}: {log[-500:]}")
        probe = redis.Redis(host="127.0.0.1", port=port, **client)
        try:
            return bool(probe.ping())
        except redis.ConnectionError:
            return False
        finally:
            probe.close()

    def restart() -> None:
        pid = state["pids"][0]
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.02)
        state["pids"][0] = spawn(server, folder, options(port))
        wait_until(answers, time.monotonic() + START_TIMEOUT)

    try:
        wait_until(answers, time.monotonic() + START_TIMEOUT)
        yield port, restart
    finally:
        stop(state, folder)


@contextlib.contextmanager
def tls_server(folder: Path) -> Iterator[tuple[int, Path]]:
    """A server on a loopback port that accepts TLS only; yields (port, CA file).

    Its certificate (see :func:`_tls_files`) comes from an authority no system trusts.

    Raises:
        RuntimeError: as :func:`_one_server`, and when ``redis-server`` was built without TLS.
    """
    files = _tls_files(folder)

    def options(port: int) -> list[str]:
        return ["--port", "0", "--tls-port", str(port), *_tls_options(files)]

    client = {"ssl": True, "ssl_ca_certs": str(files["ca"])}
    with _one_server(folder, options, client, "a TLS server") as (port, _):
        yield port, files["ca"]


@contextlib.contextmanager
def plain_server(folder: Path) -> Iterator[str]:
    """A server of the tests' own on a loopback port, for tests that do to a server what
    would disturb others using it (``CLIENT PAUSE``); yields its URL.

    Raises:
        RuntimeError: as :func:`_one_server`.
    """
    with restartable_server(folder) as (url, _):
        yield url


def _port_option(port: int) -> list[str]:
    return ["--port", str(port)]


@contextlib.contextmanager
def restartable_server(folder: Path) -> Iterator[tuple[str, Callable[[], None]]]:
    """A server as :func:`plain_server`; yields its URL and a function that restarts it
    without its data (see :func:`_one_server`).

    Raises:
        RuntimeError: as :func:`_one_server`.
    """
    with _one_server(folder, _port_option, {}, "a server") as (port, restart):
        yield f"redis://127.0.0.1:{port}/0", restart


@contextlib.contextmanager
def tls_cluster(folder: Path) -> Iterator[tuple[list[int], Path]]:
    """A 3-master cluster on loopback ports that speaks TLS only, between its nodes too;
    yields (ports, CA file). Stopped by process id on leaving.

    Raises:
        RuntimeError: as :func:`tls_server`, or when the cluster does not form in time.
    """
    files = _tls_files(folder)
    state = _start(folder / "cluster", files)
    try:
        yield state["ports"], files["ca"]
    finally:
        stop(state, folder / "cluster")


@contextlib.contextmanager
def own_cluster(folder: Path) -> Iterator[dict[str, list[int]]]:
    """A 3-master cluster on loopback ports of a test's own, for tests that do to a
    cluster what would disturb others using it (unassigning slots, stopping a master);
    yields its ``ports`` and the process ids of their servers (``pids``), in one order.
    Stopped by process id on leaving (a server stopped already is passed over).

    Raises:
        RuntimeError: as :func:`cluster_url`.
    """
    state = _start(folder)
    try:
        yield state
    finally:
        stop(state, folder)


@contextlib.contextmanager
def lossy_cluster(folder: Path) -> Iterator[tuple[str, dict[int, LossyProxy]]]:
    """A 3-master cluster whose nodes tell clients to reach them through a
    :class:`LossyProxy` each; yields its URL and the proxies by port. Stopped by process id
    on leaving.

    Raises:
        RuntimeError: as :func:`cluster_url`.
    """
    proxies: dict[int, LossyProxy] = {}
    with contextlib.ExitStack() as stack:

        def announce(port: int) -> int:
            proxy = stack.enter_context(LossyProxy("127.0.0.1", port))
            proxies[proxy.port] = proxy
            return proxy.port

        state = _start(folder, announce=announce)
        try:
            yield "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in proxies), proxies
        finally:
            stop(state, folder)


_lossy: tuple[str, dict[int, LossyProxy]] | None = None


def lossy_cluster_url() -> tuple[str, dict[int, LossyProxy]]:
    """:func:`lossy_cluster`'s URL and proxies, started on first use and stopped when the
    process exits.

    Raises:
        RuntimeError: as :func:`lossy_cluster`.
    """
    global _lossy
    if _lossy is None:
        stack = contextlib.ExitStack()
        folder = Path(tempfile.mkdtemp(prefix="savegame-lossy-cluster-"))
        _lossy = stack.enter_context(lossy_cluster(folder))
        atexit.register(stack.close)
    return _lossy


STARTED = "redis+cluster://(a cluster the tests start)"
"""Stands for the cluster :func:`cluster_url` starts, where no cluster URL is given."""


def server_url(cluster: bool) -> str:
    """The URL of the Redis server (or cluster) the tests use, after checking it answers.

    Skips the test when it does not answer (fails it under ``SAVEGAME_REQUIRE_SERVICES=1``).
    """
    from tests.stores import require_service

    if not cluster:
        return require_service(
            "Redis", "SAVEGAME_TEST_REDIS_URL", "redis://127.0.0.1:6379/0", _ping
        )
    url = require_service(
        "Redis Cluster", "SAVEGAME_TEST_REDIS_CLUSTER_URL", STARTED, lambda u: _ping(_real(u))
    )
    return _real(url)


def _real(url: str) -> str:
    return cluster_url() if url == STARTED else url


def _ping(url: str) -> None:
    from savegame.storage.redis import RedisStorage

    # A store of its own, dropped again: a probe leaves nothing on a shared server.
    with RedisStorage(f"probe_{os.getpid()}", url=url, connect_timeout=2) as storage:
        storage.create()
        storage.drop()
