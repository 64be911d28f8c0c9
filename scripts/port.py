"""The msrun master port of a make target: a free one on this host, or the one given, checked.

    python scripts/port.py NNODES [MASTER_PORT]

A fixed default (8118) is in the way of the next job on a shared host (a notebook beside a
training job, two users, a CI run): msrun then trains to the end and fails, or hangs. One node
takes a free port; several nodes must agree on one, so there it must be given. A given port that
is taken here fails at once, in one line. Prints the port.
"""
import socket
import sys


def bindable(port: int) -> bool:
    """Whether msrun's scheduler could listen on ``port`` now (it binds all interfaces)."""
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or not argv[0].isdigit():
        print("usage: python scripts/port.py NNODES [MASTER_PORT]", file=sys.stderr)
        return 2
    nodes, given = int(argv[0]), argv[1] if len(argv) == 2 else ""
    if not given:
        if nodes > 1:
            print(f"error: NNODES={nodes}: give every node the same MASTER_PORT=<port> (a free "
                  f"port on the node at MASTER_ADDR)", file=sys.stderr)
            return 2
        print(free_port())
        return 0
    if not given.isdigit() or not 1 <= int(given) <= 65535:
        print(f"error: MASTER_PORT={given!r} is not a port number (1..65535)", file=sys.stderr)
        return 2
    if not bindable(int(given)):
        print(f"error: MASTER_PORT={given} is taken on this host (another msrun job or service "
              f"holds it): leave MASTER_PORT unset for a free port, or give another", file=sys.stderr)
        return 2
    print(given)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
