"""Stopping a run cleanly: SIGINT (Ctrl-C) or SIGTERM (a scheduler's stop) ends it after its current step, with a
checkpoint written, instead of killing it mid-step."""

import signal
import threading


class StopSignals:
    """Inside `with`, SIGINT and SIGTERM only note the signal in .received, so the loop can finish its step, write a
    checkpoint and stop. A second SIGINT stops at once."""

    def __enter__(self):
        self.received, self.previous = None, {}
        if threading.current_thread() is threading.main_thread():  # Python delivers signals there alone
            for s in (signal.SIGINT, signal.SIGTERM):
                self.previous[s] = signal.signal(s, self.handle)
        return self

    def handle(self, signum, frame):
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
