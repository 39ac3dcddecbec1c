"""`seqdrop sandbox`, with TCP_NODELAY on its connections (a benchmark-only variant; same arguments).

The sandbox's handlers write an answer's headers and its body with two send() calls. Without
TCP_NODELAY, Nagle's algorithm holds the second (small) segment until the client ACKs the first,
and the client delays that ACK by up to 40 ms (Linux delayed ACK): every API call and every S3
answer can stall ~40 ms. The daemon benchmarks run against both variants to show the difference;
the fix belongs in daemon/sandbox/base.py (`disable_nagle_algorithm = True` on BaseHandler, or one
write for headers + body).
"""

import os
import sys

# bench/daemon.py would shadow the daemon package: import from the installed package, not from bench/.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

from daemon.sandbox import base, main  # noqa: E402

base.BaseHandler.disable_nagle_algorithm = True

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
