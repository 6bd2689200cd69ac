"""Files in the home that someone else planted under the sidecar's or the outbox's names.

A symlink is never followed (its target stays untouched), a FIFO never blocks, a file of
another user is never used, and a directory others can write in is refused: each refusal is
one line naming the path and what to do.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.sidecar.files import UnsafePath
from pipeline.sidecar.outbox import publish
from pipeline.sidecar.segments import segment_name
from pipeline.sidecar.server import Refused, serve

pytest_plugins = ["tests.fx_sidecar"]

VICTIM = b"precious, not ours to touch\n"
NOBODY = 65534


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM)
    return victim


def _plant(home: Path, name: str) -> Path:
    path = home / name
    path.parent.mkdir(mode=0o700, exist_ok=True)
    return path


def _refused(settings: Settings) -> str:
    """The sidecar's start-up (in this process: a subprocess costs a second of imports)
    refuses; its message. Were it to serve instead, it stops after a few seconds."""

    async def run() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(3, stop.set)
        await serve(settings, stop)

    with pytest.raises((Refused, UnsafePath)) as err:
        asyncio.run(run())
    return str(err.value)


def test_a_symlinked_lock_is_refused_and_its_target_untouched(
    sidecar_cfg, sidecar, connect, tmp_path, home
):
    cfg, s = sidecar_cfg()
    victim = _victim(tmp_path)
    link = home / "sidecar.sock.lock"
    link.symlink_to(victim)
    p = sidecar(cfg, wait=False)
    assert p.proc is not None and p.proc.wait(20) == 1, p.log
    assert "Traceback" not in p.log
    [error] = [ln for ln in p.log.splitlines() if " ERROR " in ln]  # one line
    assert error.endswith(f"{link} is a symbolic link, which is never followed here; "
                          "remove it and start again")  # fmt: skip
    assert victim.read_bytes() == VICTIM
    link.unlink()  # what the error says to do
    sidecar(cfg)
    assert connect(s.socket_path).recv_type("hello")


@pytest.mark.parametrize("name", ["outbox/wake.sock.lock", "outbox/wake.sock", "outbox/state.json"])
def test_the_sidecar_never_follows_a_symlink(sidecar_cfg, tmp_path, home, name):
    _, s = sidecar_cfg()
    victim = _victim(tmp_path)
    link = _plant(home, name)
    link.symlink_to(victim)
    assert f"{link} is a symbolic link" in _refused(s)
    assert victim.read_bytes() == VICTIM


@pytest.mark.parametrize("name", ["lock", "state.json", segment_name(1)])
def test_publish_never_follows_a_symlink(sidecar_cfg, signals, tmp_path, home, name):
    _, s = sidecar_cfg()
    victim = _victim(tmp_path)
    link = _plant(home, f"outbox/{name}")
    link.symlink_to(victim)
    with pytest.raises(UnsafePath, match=f"{link} is a symbolic link"):
        publish(s, signals(2))
    assert victim.read_bytes() == VICTIM


def test_a_symlinked_checkpoint_tmp_file_is_replaced_not_written_through(
    sidecar_cfg, signals, tmp_path, home
):
    _, s = sidecar_cfg()
    victim = _victim(tmp_path)
    link = _plant(home, f"outbox/state.json.{os.getpid()}.tmp")
    link.symlink_to(victim)
    assert publish(s, signals(2)) == [1, 2]  # the first segment: a checkpoint is written
    assert (home / "outbox" / "state.json").is_file()
    assert victim.read_bytes() == VICTIM
    assert not link.is_symlink()


@pytest.mark.timeout(60)  # the failure this guards against is a hang
def test_a_fifo_never_blocks_the_sidecar(sidecar_cfg, home):
    _, s = sidecar_cfg()
    fifo = _plant(home, "outbox/state.json")
    os.mkfifo(fifo)
    assert f"{fifo} is a FIFO, not a regular file" in _refused(s)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file of another user needs root")
def test_a_file_of_another_user_is_not_used(sidecar_cfg, signals, home):
    _, s = sidecar_cfg()
    lock = home / "sidecar.sock.lock"
    lock.write_bytes(VICTIM)
    os.chown(lock, NOBODY, NOBODY)
    assert f"{lock} belongs to uid {NOBODY}, not to this user" in _refused(s)
    assert lock.read_bytes() == VICTIM
    theirs = _plant(home, "outbox/lock")
    theirs.write_bytes(VICTIM)
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(UnsafePath, match=f"{theirs} belongs to uid {NOBODY}"):
        publish(s, signals(1))
    assert theirs.read_bytes() == VICTIM


def test_directories_others_can_write_in_are_refused(sidecar_cfg, signals, home):
    _, s = sidecar_cfg()
    home.chmod(0o777)  # anyone could swap the socket or the outbox
    assert f"{home} is writable by every user" in _refused(s)
    home.chmod(0o1777)  # sticky, like /tmp: nobody can rename or remove our files
    outbox = home / "outbox"
    outbox.mkdir(mode=0o700)
    outbox.chmod(0o770)
    assert f"{outbox} is writable by others" in _refused(s)
    with pytest.raises(UnsafePath, match=f"{outbox} is writable by others"):
        publish(s, signals(1))
    outbox.chmod(0o700)
    assert publish(s, signals(1)) == [1]
