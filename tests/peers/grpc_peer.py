#!/usr/bin/env python3
"""A gRPC greeter served by gRPC's own C core (Debian's python3-grpcio), so
that tests/grpc_interop.rs can check the mesh against an implementation
that is not tonic.

    python3 -u grpc_peer.py PORT MODE [ARG]

PORT is the loopback port to listen on (0: any free one). The first line on
stdout is "port N", the port chosen. MODE says how it answers:

    good            SayHello answers "Hello <name> from <port>"; SayHellos
                    streams three such messages, then OK
    unavailable     every call UNAVAILABLE before any message (trailers-only)
    slow [SECONDS]  answers as good after SECONDS (default 2), or stops when
                    the client cancels the call
    pushback MS     calls 1, 3, 5... UNAVAILABLE trailers-only with
                    grpc-retry-pushback-ms: MS; calls 2, 4, 6... as good
    failing_stream  SayHello as good; SayHellos streams one message, then
                    UNAVAILABLE in its trailers

No protoc: the methods take and give raw bytes, the protobuf encoded by hand
(helloworld.HelloRequest and HelloReply both have one string, field 1).

It is driven through stdin, one command a line:

    calls           prints one line per call received so far, in order,
                    "call METHOD AT PREVIOUS REMAINING ENDED", then "end":
                    AT the arrival in seconds (a monotonic clock),
                    PREVIOUS its grpc-previous-rpc-attempts ("-" if none),
                    REMAINING the seconds its deadline left on arrival ("-"
                    if none), ENDED how the handler ended (running,
                    answered, aborted, cancelled)

and exits at once when stdin closes, so a test that dies leaves no peer.
"""

import os
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "helloworld.Greeter"


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(data, at):
    n, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, at


def hello_reply(message):
    """helloworld.HelloReply{message}, encoded."""
    text = message.encode("utf-8")
    return b"\x0a" + varint(len(text)) + text


def request_name(data):
    """The name (field 1) of an encoded helloworld.HelloRequest."""
    at, name = 0, ""
    while at < len(data):
        key, at = read_varint(data, at)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, at = read_varint(data, at)
        elif wire == 1:
            at += 8
        elif wire == 5:
            at += 4
        elif wire == 2:
            size, at = read_varint(data, at)
            if field == 1:
                name = data[at : at + size].decode("utf-8")
            at += size
        else:
            raise ValueError("unsupported wire type %d" % wire)
    return name


class Calls:
    """Every call received, in order of arrival."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = []

    def arrived(self, method, context):
        metadata = dict(context.invocation_metadata())
        remaining = context.time_remaining()
        record = {
            "method": method,
            "at": time.monotonic(),
            "previous": metadata.get("grpc-previous-rpc-attempts", "-"),
            # grpcio reports "no deadline" as a very large number.
            "remaining": "%.3f" % remaining if remaining is not None and remaining < 1e6 else "-",
            "ended": "running",
        }
        with self.lock:
            self.calls.append(record)
            return record, len(self.calls)

    def report(self):
        with self.lock:
            lines = [
                "call %s %.6f %s %s %s"
                % (c["method"], c["at"], c["previous"], c["remaining"], c["ended"])
                for c in self.calls
            ]
        return "\n".join(lines + ["end"]) + "\n"


class Greeter:
    def __init__(self, port, mode, arg):
        self.port = port
        self.mode = mode
        self.arg = arg
        self.calls = Calls()

    def greeting(self, request):
        return "Hello %s from %d" % (request_name(request), self.port)

    def abort(self, record, context, message):
        record["ended"] = "aborted"
        context.abort(grpc.StatusCode.UNAVAILABLE, message)

    def refuses(self, record, number, context):
        """Aborts the call if this mode refuses it before any message."""
        if self.mode == "unavailable":
            self.abort(record, context, "draining")
        if self.mode == "pushback" and number % 2 == 1:
            context.set_trailing_metadata((("grpc-retry-pushback-ms", self.arg),))
            self.abort(record, context, "pushing back")

    def waits(self, record, context):
        """In slow mode, sleeps; False when the client cancelled first."""
        if self.mode != "slow":
            return True
        until = time.monotonic() + float(self.arg or "2")
        while time.monotonic() < until:
            if not context.is_active():
                record["ended"] = "cancelled"
                return False
            time.sleep(0.01)
        return True

    def say_hello(self, request, context):
        record, number = self.calls.arrived("SayHello", context)
        self.refuses(record, number, context)
        if not self.waits(record, context):
            return hello_reply("cancelled")
        record["ended"] = "answered"
        return hello_reply(self.greeting(request))

    def say_hellos(self, request, context):
        record, number = self.calls.arrived("SayHellos", context)
        self.refuses(record, number, context)
        if not self.waits(record, context):
            return
        yield hello_reply(self.greeting(request))
        if self.mode == "failing_stream":
            self.abort(record, context, "lost its greeting")
        for _ in range(2):
            yield hello_reply(self.greeting(request))
        record["ended"] = "answered"


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    port, mode = int(sys.argv[1]), sys.argv[2]
    arg = sys.argv[3] if len(sys.argv) > 3 else None
    if mode not in ("good", "unavailable", "slow", "pushback", "failing_stream"):
        sys.exit("unknown mode %r\n%s" % (mode, __doc__))
    if mode == "pushback" and arg is None:
        sys.exit("pushback needs the value of grpc-retry-pushback-ms")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    bound = server.add_insecure_port("127.0.0.1:%d" % port)
    if bound == 0:
        sys.exit("cannot listen on 127.0.0.1:%d" % port)
    greeter = Greeter(bound, mode, arg)
    # No (de)serializers: handlers take and return bytes.
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "SayHello": grpc.unary_unary_rpc_method_handler(greeter.say_hello),
                    "SayHellos": grpc.unary_stream_rpc_method_handler(greeter.say_hellos),
                },
            ),
        )
    )
    server.start()
    sys.stdout.write("port %d\n" % bound)
    sys.stdout.flush()

    for line in sys.stdin:
        if line.strip() == "calls":
            sys.stdout.write(greeter.calls.report())
            sys.stdout.flush()
    # stdin closed: the test is done (or dead).
    server.stop(0)
    os._exit(0)


if __name__ == "__main__":
    main()
