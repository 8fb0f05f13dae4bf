#!/usr/bin/env python3
"""The version guard's cost inside Redis, counted in instructions.

Runs redis-server under valgrind's callgrind (apt-get install valgrind) and
counts the instructions it executes for the same 10,240 writes of a
5-field record (20 calls of 512) done five ways: a raw MULTI/EXEC of
DEL + HSET + EXPIRE writing the same hashes the guard stores, a minimal
guarded FUNCTION (HGET of a numeric version, compare, HSET, EXPIRE), and
prefetch/src/guard/library.lua's pf2_apply for live updates (same field
names), deletes (raw: DEL + SET ... PX of the tombstone) and snapshot
writes. Instruction counts do not move with this VM's speed, which swings
wall and CPU times by half from one minute to the next.

The arguments follow library.lua's documented layout (written here by hand,
as a client in another language would); every run checks its replies, so a
layout that drifted fails loudly. Usage: python3 scripts/guard_cost.py
"""
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = os.path.join(ROOT, "prefetch", "src", "guard", "library.lua")
CALLS, N = 20, 512
MINIMAL = """#!lua name=guard_cost_minimal
redis.register_function('gc_min', function(keys, args)
  local n, a = 0, 1
  for k = 1, #keys do
    local v = tonumber(args[a])
    local cur = tonumber(redis.call('HGET', keys[k], '__v'))
    if cur == nil or v > cur then
      redis.call('HSET', keys[k], unpack(args, a + 1, a + 12))
      redis.call('EXPIRE', keys[k], 3600)
      n = n + 1
    end
    a = a + 13
  end
  return n
end)"""
NAMES = "0123456789abcdef"


def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def fields(i, r):
    return ["id", "cat-%06d" % i, "name", "Item %d" % i, "category", "c%d" % (i % 7),
            "price", "%d.%02d" % (r, i % 100), "stock", str(r * 3 + i)]


def key(i):
    return "cache:cat-%06d" % i


def tomb(i):
    return "__pf:u:{cache:cat-%06d}" % i


def commit(r, i):
    return (1 << 32) + r * 1000000 + i


def version(r, i):
    c = commit(r, i)
    return "%d:%d:0" % (c >> 32, c & 0xFFFFFFFF)


def digits(r, i):
    return "%020d%010d" % (commit(r, i), 0)


def h(i, r):
    return digits(r, i) + "%016x" % ((i * 7919 + r) & (2**64 - 1)) + NAMES


def calls(kind, r):
    """The commands of one round `r` of `kind`, and the replies expected."""
    out = []
    for c in range(CALLS):
        ids = range(c * N, (c + 1) * N)
        if kind in ("raw", "raw-delete"):
            cmds = [resp("MULTI")]
            for i in ids:
                cmds.append(resp("DEL", key(i)))
                if kind == "raw":
                    cmds.append(resp("HSET", key(i), *fields(i, r), "__v", version(r, i), "__h", h(i, r)))
                    cmds.append(resp("EXPIRE", key(i), 3600))
                else:
                    cmds.append(resp("SET", tomb(i), version(r, i), "PX", 86400000))
            cmds.append(resp("EXEC"))
            out.append(b"".join(cmds))
        elif kind == "minimal":
            args = []
            for i in ids:
                args += [str(commit(r, i))] + fields(i, r) + ["__v", str(commit(r, i))]
            out.append(resp("FCALL", "gc_min", N, *[key(i) for i in ids], *args))
        else:
            mode = "snapshot" if kind == "snapshot" else "live"
            keys = ["__pf:m:cache", "__pf:w:{cache}"]
            args = ["src", mode, 3600, 86400000, "" if mode == "snapshot" else version(r, c * N + N - 1)]
            for i in ids:
                keys += [key(i), tomb(i)]
                if kind == "delete":
                    args += ["d", version(r, i), digits(r, i)]
                else:
                    args += [NAMES, version(r, i), digits(r, i), h(i, r), 5] + fields(i, r)
            out.append(resp("FCALL", "pf2_apply", len(keys), *keys, *args))
    return b"".join(out)


class Redis:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _line(self):
        while b"\r\n" not in self.buf:
            self.buf += self.sock.recv(1 << 20)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind in (b"+", b":"):
            return rest.decode()
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.sock.recv(1 << 20)
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data.decode()
        if kind == b"*":
            return [self.reply() for _ in range(int(rest))]
        raise RuntimeError("unexpected reply %r" % line)

    def call(self, *args):
        self.send(resp(*args))
        return self.reply()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def count(kind, setup_kind, tmp):
    """Instructions per write of round 2 of `kind` after round 1 of `setup_kind`."""
    port = free_port()
    out = os.path.join(tmp, "callgrind.%s.out" % kind)
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out, "redis-server",
         "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                r = Redis(port)
                r.call("PING")
                break
            except OSError:
                time.sleep(0.5)
        with open(LIBRARY) as f:
            r.call("FUNCTION", "LOAD", "REPLACE", f.read())
        r.call("FUNCTION", "LOAD", "REPLACE", MINIMAL)
        r.call("HSET", "__pf:m:cache", "source", "src", "floor", "0:0:0")
        for kind_, rnd in ((setup_kind, 1), (kind, 2)):
            if kind_ == kind and rnd == 2:
                if kind == "snapshot":
                    r.call("FCALL", "pf2_window", 2, "__pf:m:cache", "__pf:w:{cache}", "open", 600000)
                subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            r.send(calls(kind_, rnd))
            for _ in range(CALLS):
                reply = r.reply()
                if kind_ in ("raw", "raw-delete"):
                    for _ in range(N * (3 if kind_ == "raw" else 2)):
                        r.reply()  # QUEUED
                    reply = r.reply()
                    ok = isinstance(reply, list) and len(reply) == N * (3 if kind_ == "raw" else 2)
                elif kind_ == "minimal":
                    ok = reply == str(N)
                else:
                    ok = reply == []  # no write refused as stale
                if not ok:
                    raise RuntimeError("%s round %d: unexpected reply %r" % (kind_, rnd, reply)[:300])
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        proc.terminate()
        proc.wait()
    dumps = sorted(p for p in os.listdir(tmp) if p.startswith("callgrind.%s.out." % kind))
    text = subprocess.run(["callgrind_annotate", os.path.join(tmp, dumps[-1])],
                          capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", text).group(1).replace(",", ""))
    return total / (CALLS * N)


def main():
    rows = [("raw MULTI/EXEC: DEL + HSET + EXPIRE of the same hashes", "raw", "raw"),
            ("minimal guard: HGET, compare, HSET, EXPIRE", "minimal", "minimal"),
            ("pf2_apply, live update (same field names)", "live", "live"),
            ("raw MULTI/EXEC: DEL + SET ... PX of the tombstone", "raw-delete", "raw"),
            ("pf2_apply, live delete", "delete", "live"),
            ("pf2_apply, snapshot write (window open)", "snapshot", "live")]
    got = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, kind, setup in rows:
            got[kind] = count(kind, setup, tmp)
            print("%-58s %8.0f instructions/write" % (label, got[kind]), flush=True)
    print("live update / raw %.2f, minimal / raw %.2f, delete / raw delete %.2f, snapshot / raw %.2f"
          % (got["live"] / got["raw"], got["minimal"] / got["raw"],
             got["delete"] / got["raw-delete"], got["snapshot"] / got["raw"]))


if __name__ == "__main__":
    sys.exit(main())
