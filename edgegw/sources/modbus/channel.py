"""Byte channels for RTU frames: a serial port (termios, no pyserial) or a TCP socket.

Both feed one receive buffer from the event loop, so the RTU master can wait for "n bytes or
the deadline" and for "the line has been quiet this long" the same way on either.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import termios
import time

from edgegw.sources.modbus.config import SerialSettings

_BAUD = {
    1200: termios.B1200,
    2400: termios.B2400,
    4800: termios.B4800,
    9600: termios.B9600,
    19200: termios.B19200,
    38400: termios.B38400,
    57600: termios.B57600,
    115200: termios.B115200,
    230400: termios.B230400,
}
_READ_SIZE = 4096
WRITE_TIMEOUT = 2.0  # seconds a request may wait for the adapter to take it


class ChannelClosed(Exception):
    """The device or the connection went away."""


class Channel:
    """A receive buffer filled by the event loop, and the waits an RTU master needs."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._arrived = asyncio.Event()
        self._closed: str | None = None
        self.last_byte_at = 0.0  # monotonic time of the last byte received

    @property
    def is_open(self) -> bool:
        return self._closed is None

    def _received(self, data: bytes) -> None:
        self._buffer += data
        self.last_byte_at = time.monotonic()
        self._arrived.set()

    def _lost(self, reason: str) -> None:
        if self._closed is None:
            self._closed = reason
        self._arrived.set()

    async def read_exactly(self, count: int, deadline: float) -> bytes:
        """`count` bytes, or TimeoutError at the monotonic `deadline`."""
        while len(self._buffer) < count:
            if self._closed is not None:
                raise ChannelClosed(self._closed)
            self._arrived.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def discard(self) -> int:
        """Drop what was received and not read; how many bytes."""
        count = len(self._buffer)
        self._buffer.clear()
        return count

    async def settle(self, quiet: float, limit: float) -> int:
        """Discard input until nothing arrived for `quiet` seconds (at most `limit` seconds in
        all): a late or garbled reply must never be read as the answer to the next request.
        Returns the bytes discarded."""
        dropped = self.discard()
        start = time.monotonic()
        give_up = start + limit
        while self._closed is None:
            now = time.monotonic()
            quiet_since = max(self.last_byte_at, start)
            if now - quiet_since >= quiet or now >= give_up:
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._arrived.wait(), min(quiet_since + quiet, give_up) - now
                )
            dropped += self.discard()
        return dropped

    async def write(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SerialChannel(Channel):
    """A serial device in raw mode, opened exclusively, read from the event loop."""

    def __init__(self, settings: SerialSettings) -> None:
        super().__init__()
        self.settings = settings
        self._fd = -1
        self._loop = asyncio.get_running_loop()

    def open(self) -> None:
        """Open and configure the port; OSError with the device's words otherwise."""
        s = self.settings
        fd = os.open(s.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            # Another process on the same bus would garble every frame: refuse to share it.
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OSError(f"{s.path} is in use by another process") from None
            try:
                _configure(fd, s)
                termios.tcflush(fd, termios.TCIOFLUSH)
            except termios.error as exc:
                code, message = exc.args if len(exc.args) == 2 else (0, str(exc))
                raise OSError(code, f"not a usable serial port ({message})") from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._loop.add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._stop_reading()
            self._lost(f"{self.settings.path}: {exc.strerror}")
            return
        if not data:
            self._stop_reading()
            self._lost(f"{self.settings.path} closed")
            return
        self._received(data)

    def _stop_reading(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)

    async def write(self, data: bytes) -> None:
        if self._closed is not None:
            raise ChannelClosed(self._closed)
        view = memoryview(data)
        deadline = time.monotonic() + WRITE_TIMEOUT
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self._lost(f"{self.settings.path}: the adapter takes no data")
                    raise ChannelClosed(self._closed or "") from None
                await self._writable(deadline)
                continue
            except OSError as exc:
                self._lost(f"{self.settings.path}: {exc.strerror}")
                raise ChannelClosed(self._closed or "") from None
            view = view[written:]

    async def _writable(self, deadline: float) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()

        def writable() -> None:
            if not ready.done():
                ready.set_result(None)

        self._loop.add_writer(self._fd, writable)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ready, max(0.0, deadline - time.monotonic()))
        finally:
            self._loop.remove_writer(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            self._stop_reading()
            # Unsent output would make close() wait for the tty's drain (seconds, blocking
            # the event loop); nothing unsent matters once the line is given up.
            with contextlib.suppress(termios.error):
                termios.tcflush(self._fd, termios.TCOFLUSH)
            os.close(self._fd)
            self._fd = -1
        self._lost("closed")


def _configure(fd: int, s: SerialSettings) -> None:
    attrs = termios.tcgetattr(fd)
    iflag, oflag, cflag, lflag = 0, 1, 2, 3
    attrs[iflag] = 0  # no break, parity or flow control processing, no CR/NL mapping
    attrs[oflag] = 0
    attrs[lflag] = 0  # raw: no echo, no canonical mode, no signals
    cflag_value = termios.CREAD | termios.CLOCAL
    cflag_value |= termios.CS8 if s.bytesize == 8 else termios.CS7
    if s.stopbits == 2:
        cflag_value |= termios.CSTOPB
    if s.parity != "N":
        cflag_value |= termios.PARENB
        if s.parity == "O":
            cflag_value |= termios.PARODD
    attrs[cflag] = cflag_value
    attrs[4] = attrs[5] = _BAUD[s.baudrate]  # ispeed, ospeed
    attrs[6][termios.VMIN] = 0
    attrs[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


class TcpChannel(Channel, asyncio.Protocol):
    """RTU frames over a TCP socket (a serial-to-Ethernet converter)."""

    def __init__(self, host: str, port: int) -> None:
        Channel.__init__(self)
        self.host = host
        self.port = port
        self._transport: asyncio.Transport | None = None

    async def open(self, timeout: float) -> None:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.create_connection(lambda: self, self.host, self.port), timeout)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(f"connection to {self.host}:{self.port} lost" + (f": {exc}" if exc else ""))

    async def write(self, data: bytes) -> None:
        if self._closed is not None or self._transport is None:
            raise ChannelClosed(self._closed or "not connected")
        self._transport.write(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()
            self._transport = None
        self._lost("closed")
