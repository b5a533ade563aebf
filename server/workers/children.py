"""The supervisor's child processes: started with multiprocessing's spawn method (a fresh
interpreter: gRPC and the engine libraries do not survive fork), each with a pipe on which it
says "ready" or why it failed and is later told to stop; watched through their sentinels on the
event loop. A child whose pipe reaches end-of-file knows the supervisor is gone (even killed
with SIGKILL) and stops too. Also the port the front ends share, reserved while the server
runs."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import socket
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

CONTEXT = multiprocessing.get_context("spawn")
STOP = ("stop",)


class ChildExited(RuntimeError):
    """A child process ended before it said anything."""

    def __init__(self, name: str, exitcode: int | None) -> None:
        super().__init__(f"the {name} process exited with code {exitcode} before it served "
                         f"(its log lines above say why)")
        self.exitcode = exitcode


@dataclass
class Child:
    name: str  # "engine", "worker 0", ...
    process: BaseProcess
    conn: Connection  # the supervisor's end of the child's pipe
    ready: bool = False  # it said "ready" (else it has nothing to drain)

    @property
    def pid(self) -> int | None:
        return self.process.pid


def spawn(name: str, target: Callable[..., None], *args: Any) -> Child:
    """Start `target(*args, conn)` in a new process; `conn` is the child's end of its pipe."""
    ours, theirs = CONTEXT.Pipe(duplex=True)
    process = CONTEXT.Process(target=target, args=(*args, theirs), name=f"detserve {name}",
                              daemon=True)
    process.start()
    theirs.close()
    return Child(name, process, ours)


async def told_to_stop(conn: Connection) -> bool:
    """In a child: wait for STOP (True) or for the supervisor to be gone (False)."""
    while True:
        await _readable([conn.fileno()])
        try:
            if conn.recv() == STOP:
                return True
        except (EOFError, OSError):
            return False


async def _readable(fds: list[int]) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    for fd in fds:
        loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        for fd in fds:
            loop.remove_reader(fd)


async def first_message(child: Child) -> tuple[Any, ...]:
    """The child's first message; ChildExited if it ends first."""
    while True:
        await _readable([child.conn.fileno(), child.process.sentinel])
        if child.conn.poll():
            try:
                message: tuple[Any, ...] = child.conn.recv()
                return message
            except EOFError:  # it exited: its end of the pipe closed
                break
        if not child.process.is_alive():
            break
    await exited(child)
    raise ChildExited(child.name, child.process.exitcode)


async def exited(child: Child) -> int | None:
    """Wait for the child to end; its exit code."""
    if child.process.is_alive():
        await _readable([child.process.sentinel])
    child.process.join()
    child.conn.close()
    return child.process.exitcode


async def stop(child: Child, grace_s: float) -> int | None:
    """Tell the child to stop, then SIGKILL after `grace_s`; the exit code. One still starting
    holds nothing to drain (and reads its pipe only once ready): killed at once."""
    if child.process.is_alive():
        if not child.ready:
            child.process.kill()
        with contextlib.suppress(OSError):
            child.conn.send(STOP)
    try:
        return await asyncio.wait_for(exited(child), grace_s)
    except TimeoutError:
        child.process.kill()
        return await exited(child)


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Pick (port 0) or check the gRPC port, and hold it for the front ends: an exclusive
    bind first fails where anything else serves the port, then a socket bound with
    SO_REUSEPORT (never listening, so it takes no connections) keeps it ours while front ends
    come and go. OSError names what failed."""
    bare = host.strip("[]")
    family, kind, proto, _, address = socket.getaddrinfo(
        bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        probe.bind(address)
        chosen = int(probe.getsockname()[1])
    keep = socket.socket(family, kind, proto)
    try:
        keep.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        keep.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        keep.bind((address[0], chosen, *address[2:]))
    except BaseException:
        keep.close()
        raise
    return keep, chosen
