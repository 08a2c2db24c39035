"""The channel between the program's process and the test runner: length-prefixed pickles of plain data.

Imported by :mod:`prmlab.sandbox.harness` (stdlib only). The test runner never unpickles anything but plain data:
its unpickler resolves only a short list of value types (numbers, strings, containers, ``Fraction``, ``Decimal``,
``datetime``...), never a class or function of the program, and never ``copyreg``'s reconstructors. Every other
object stays in the program's process; the runner sees it as a :class:`Remote` handle that forwards calls,
attribute reads, ``len``, indexing and iteration, compares equal only to itself and refuses to be judged true or
false. So an object with a forged ``__eq__``, ``__bool__`` or ``type`` cannot reach the assertions.
"""

import collections
import datetime
import decimal
import fractions
import io
import os
import pickle
import struct

HEADER = struct.Struct(">I")
MAX_FRAME = 64 << 20
"""Largest message in bytes; a bigger length prefix is a protocol violation."""
VALUE_CLASSES = (complex, bytearray, set, frozenset, range, slice, int, float, str, bytes, list, tuple, dict, bool,
                 collections.OrderedDict, collections.Counter, collections.deque, collections.defaultdict,
                 fractions.Fraction, decimal.Decimal, datetime.date, datetime.datetime, datetime.time,
                 datetime.timedelta, datetime.timezone)
"""Classes whose instances cross the channel as values (exactly these classes, not subclasses)."""
PLAIN = frozenset(VALUE_CLASSES) | {type(None), type(Ellipsis)}
CLASS_IDS = frozenset(id(c) for c in VALUE_CLASSES)
"""The value classes themselves (a defaultdict's factory, a reduce's callable) pickle by name, not as handles."""
ALLOWED_GLOBALS = {(c.__module__, c.__qualname__): c for c in VALUE_CLASSES}
ALLOWED_GLOBALS[("builtins", "Ellipsis")] = Ellipsis


class ChannelClosed(BaseException):
    """The peer closed the channel or broke the protocol (the program's process died or wrote into it)."""


def write_all(fd, data, write=os.write):
    view = memoryview(data)
    while view:
        view = view[write(fd, view):]


def read_exactly(fd, n, read=os.read):
    chunks, left = [], n
    while left:
        chunk = read(fd, min(left, 1 << 20))
        if not chunk:
            raise ChannelClosed("channel closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class ProgramPickler(pickle.Pickler):
    """Used by the program's process: plain values are pickled, every other object becomes a handle."""

    def __init__(self, file, handles):
        super().__init__(file, protocol=5)
        self.handles, self.made = handles, 0

    def persistent_id(self, obj):
        if type(obj) in PLAIN or id(obj) in CLASS_IDS:
            return None
        key = id(obj)
        self.handles[key] = obj
        self.made += 1
        return (key, type(obj).__name__)


class RunnerPickler(pickle.Pickler):
    """Used by the test runner: its values are pickled, a :class:`Remote` goes back as its handle."""

    def persistent_id(self, obj):
        return obj._hid if type(obj) is Remote else None


class RunnerUnpickler(pickle.Unpickler):
    """Plain data only; handles become :class:`Remote` objects bound to ``rpc``."""

    def __init__(self, file, rpc):
        super().__init__(file)
        self.rpc = rpc

    def find_class(self, module, name):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not plain data") from None

    def persistent_load(self, pid):
        if not (type(pid) is tuple and len(pid) == 2 and type(pid[0]) is int and type(pid[1]) is str):
            raise pickle.UnpicklingError("malformed handle")
        return Remote(self.rpc, pid)


class ProgramUnpickler(pickle.Unpickler):
    """Used by the program's process: handles sent back by the runner become the original objects."""

    def __init__(self, file, handles):
        super().__init__(file)
        self.handles = handles

    def persistent_load(self, pid):
        return self.handles[pid[0]]


class Remote:
    """An object that lives in the program's process, seen from the test runner (see the module docstring)."""

    __slots__ = ("_rpc", "_hid")

    def __init__(self, rpc, hid):
        object.__setattr__(self, "_rpc", rpc)
        object.__setattr__(self, "_hid", hid)

    def __call__(self, *args, **kwargs):
        return self._rpc("call", self._hid, args, kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._rpc("getattr", self._hid, name)

    def __iter__(self):
        return iter(self._rpc("list", self._hid))

    def __len__(self):
        return self._rpc("len", self._hid)

    def __getitem__(self, key):
        return self._rpc("getitem", self._hid, key)

    def __bool__(self):
        raise TypeError(f"a {self._hid[1]} object of the program cannot be judged true or false; return plain data")

    def __repr__(self):
        return f"<program object {self._hid[1]}>"


def send(fd, obj, pickler, *args):
    """One message (length prefix and pickle) in one write; returns the pickler (its ``made`` counts handles)."""
    buf = io.BytesIO()
    buf.write(b"\0\0\0\0")
    p = pickler(buf, *args)
    p.dump(obj)
    view = buf.getbuffer()
    HEADER.pack_into(view, 0, len(view) - HEADER.size)
    del view
    write_all(fd, buf.getvalue())
    return p


class Channel:
    """The reading end of a channel: whole messages from a buffer filled by large reads (usually one read for all
    the messages that are waiting), never more than one message's worth of trust in the peer's length prefix."""

    def __init__(self, fd, read=os.read):
        self.fd, self.read, self.buf, self.pos = fd, read, b"", 0

    def _fill(self, need):
        """At least ``need`` unread bytes in the buffer (the peer's length prefix was checked against MAX_FRAME)."""
        have = len(self.buf) - self.pos
        chunks = [self.buf[self.pos:]] if have else []
        while have < need:
            chunk = self.read(self.fd, max(need - have, 1 << 16))
            if not chunk:
                raise ChannelClosed("channel closed")
            chunks.append(chunk)
            have += len(chunk)
        self.buf, self.pos = b"".join(chunks) if len(chunks) != 1 else chunks[0], 0

    def frame(self):
        """The next message's bytes."""
        if len(self.buf) - self.pos < HEADER.size:
            self._fill(HEADER.size)
        (n,) = HEADER.unpack_from(self.buf, self.pos)
        if n > MAX_FRAME:
            raise ChannelClosed(f"a message of {n} bytes")
        if len(self.buf) - self.pos < HEADER.size + n:
            self._fill(HEADER.size + n)
        start = self.pos + HEADER.size
        self.pos = start + n
        return memoryview(self.buf)[start:self.pos]

    def pending(self):
        """True when a whole message is already buffered (reading it will not block)."""
        have = len(self.buf) - self.pos
        return have >= HEADER.size and have >= HEADER.size + HEADER.unpack_from(self.buf, self.pos)[0]

    def recv(self, unpickler, *args):
        return unpickler(io.BytesIO(self.frame()), *args).load()


def recv(fd, unpickler, *args):
    (n,) = HEADER.unpack(read_exactly(fd, HEADER.size))
    if n > MAX_FRAME:
        raise ChannelClosed(f"a message of {n} bytes")
    return unpickler(io.BytesIO(read_exactly(fd, n)), *args).load()
