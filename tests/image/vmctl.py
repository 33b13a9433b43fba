#!/usr/bin/env python3
"""Talks to a QEMU guest from the host, for tests/image/run.sh. Standard library only.

  vmctl.py qmp SOCKET COMMAND            QEMU monitor (QMP), e.g. system_powerdown
  vmctl.py ping SOCKET                   QEMU guest agent: exit 0 once the agent answers
  vmctl.py exec SOCKET PROG [ARG...]     run PROG in the guest through the guest agent;
                                         prints its stdout/stderr, exits with its status
Every call has a deadline (--timeout, default 30 s).
"""
import base64
import json
import random
import socket
import sys
import time


def connect(path, deadline):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(max(0.1, deadline - time.monotonic()))
    s.connect(path)
    return s


def read_json(f):
    while True:
        line = f.readline()
        if not line:
            raise ConnectionError("connection closed")
        msg = json.loads(line)
        if "event" not in msg:   # QMP events are not answers
            return msg


def qmp(path, command, deadline):
    with connect(path, deadline) as s:
        f = s.makefile("rw")
        read_json(f)  # greeting
        for cmd in ("qmp_capabilities", command):
            f.write(json.dumps({"execute": cmd}) + "\n")
            f.flush()
            reply = read_json(f)
            if "error" in reply:
                raise SystemExit(f"qmp {cmd}: {reply['error']}")
    return 0


class Agent:
    def __init__(self, path, deadline):
        self.s = connect(path, deadline)
        self.f = self.s.makefile("rwb")
        # Resynchronise: the agent may hold a half-read request from an earlier client.
        token = random.randrange(1, 2**31)
        self.s.sendall(b"\xff")
        self._send({"execute": "guest-sync-delimited", "arguments": {"id": token}})
        while True:
            line = self.f.readline()
            if not line:
                raise ConnectionError("agent closed the connection")
            line = line.lstrip(b"\xff").strip()
            if line and json.loads(line).get("return") == token:
                break

    def _send(self, obj):
        self.f.write(json.dumps(obj).encode() + b"\n")
        self.f.flush()

    def call(self, command, **arguments):
        self._send({"execute": command, "arguments": arguments} if arguments else {"execute": command})
        reply = json.loads(self.f.readline())
        if "error" in reply:
            raise RuntimeError(f"{command}: {reply['error']}")
        return reply.get("return")


def main():
    args = sys.argv[1:]
    timeout = 30.0
    if args and args[0].startswith("--timeout="):
        timeout = float(args.pop(0).split("=", 1)[1])
    deadline = time.monotonic() + timeout
    if len(args) < 2:
        raise SystemExit(__doc__)
    verb, path, rest = args[0], args[1], args[2:]
    if verb == "qmp":
        return qmp(path, rest[0], deadline)
    if verb == "ping":
        while True:
            try:
                Agent(path, min(deadline, time.monotonic() + 5)).call("guest-ping")
                return 0
            except (OSError, ConnectionError, ValueError, RuntimeError):
                if time.monotonic() > deadline:
                    return 1
                time.sleep(1)
    if verb == "exec":
        agent = Agent(path, deadline)
        pid = agent.call("guest-exec", path=rest[0], arg=rest[1:], **{"capture-output": True})["pid"]
        while True:
            st = agent.call("guest-exec-status", pid=pid)
            if st.get("exited"):
                sys.stdout.write(base64.b64decode(st.get("out-data", "")).decode(errors="replace"))
                sys.stderr.write(base64.b64decode(st.get("err-data", "")).decode(errors="replace"))
                return st.get("exitcode", 128 + st.get("signal", 0))
            if time.monotonic() > deadline:
                raise SystemExit(f"guest command {rest} did not finish in {timeout} s")
            time.sleep(0.2)
    raise SystemExit(__doc__)


if __name__ == "__main__":
    sys.exit(main())
