"""msrun runs a script path, not ``-m module``: this runs a project module for it.

    msrun ... scripts/launch.py trainer.train --config configs/demo.yaml

The module runs in a child process, and a failed child's exit code is passed on only after
FAILURE_GRACE seconds. msrun kills every worker as soon as one exits non-zero; a worker killed
before it left the cluster (which a process does as it exits) keeps the scheduler, and so msrun,
waiting for its heartbeat timeout (MS_NODE_TIMEOUT, 30 s). Ranks that stop together (the agreed
NaN stop of trainer.train) leave within a second of each other, so with the grace msrun sees the
first failure only after every rank has left: such jobs took 68-85 s to exit about one time in
three, and 31-41 s with the grace (start-up included).
"""
import os
import signal
import subprocess
import sys
import time

FAILURE_GRACE = 5.0
LAUNCHER_PID_ENV = "STNET_LAUNCHER_PID"     # trainer.cloud's (this script imports no MindSpore)
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.exit("usage: launch.py MODULE [ARGS ...]  (e.g. trainer.train --config configs/demo.yaml)")
    # The ranks' common launcher is msrun, this process's parent (trainer.cloud.launch_token).
    child = subprocess.Popen([sys.executable, "-m", *argv[1:]],
                             env={**os.environ, LAUNCHER_PID_ENV: str(os.getppid())})
    for number in FORWARDED_SIGNALS:
        signal.signal(number, lambda received, _frame: child.send_signal(received))
    code = child.wait()
    if code != 0:
        time.sleep(FAILURE_GRACE)
    return code if code >= 0 else 128 - code     # killed by signal N: 128 + N, as a shell reports


if __name__ == "__main__":
    sys.exit(main(sys.argv))
