"""How a ``lum`` process ends: with its command's exit status, deterministically, never in an abort.

``run_command(fn, argv)`` runs the command and turns any way it ends into a status (an uncaught exception:
its traceback, redacted, and 1); ``end_process(status)`` then stops Spark and py4j if a session was started,
runs the ``atexit`` handlers, flushes stdout/stderr and calls ``os._exit(status)``.

Why not a normal interpreter exit. Arrow reads of Delta tables through delta-rs' default filesystem (a
``pyarrow.fs.PyFileSystem`` over a Python handler) leave Arrow's scan generators holding Python file objects
(``arrow::py::PyReadableFile``); ``to_table`` returns before those generators are destroyed, which happens
on an Arrow thread-pool thread a moment later. When that moment falls after ``Py_FinalizeEx`` has marked the
interpreter as finalizing, the destructor's ``PyGILState_Ensure`` makes CPython 3.11 end the thread with
``pthread_exit``, whose forced unwind runs into a ``noexcept`` C++ destructor: ``std::terminate``,
"terminate called without an active exception", exit status 134 after all the work was done (found with
deltalake 1.6.6 and pyarrow 26, backtrace of the core: ``~PyReadableFile`` -> ``PyGILState_Ensure`` ->
``take_gil`` -> ``PyThread_exit_thread``). The reads in ``stages.warehouse`` avoid it for local tables
(``stages.warehouse.reads.pyarrow_dataset`` uses Arrow's native filesystem, no Python objects); object-store
tables still read through delta-rs' handler, so the process must not finalize with Arrow work in flight.
Everything a normal exit does before finalization still happens here (non-daemon threads joined, atexit
handlers, buffered output flushed); only the teardown that races with native threads is skipped.
Airflow's task processes end the same way (its supervisor's forked child calls ``os._exit``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from stages.core.redact import redact
from stages.core.spark import stop_spark

log = logging.getLogger(__name__)


def run_command(fn: Callable[[Sequence[str]], int], argv: Sequence[str]) -> int:
    """``fn(argv)``'s status; ``SystemExit`` gives its code, any other exception 1 (redacted traceback printed)."""
    try:
        return int(fn(argv) or 0)
    except SystemExit as exc:  # argparse (--help, usage errors) and explicit sys.exit
        if exc.code is None or isinstance(exc.code, int):
            return int(exc.code or 0)
        print(redact(exc.code), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BaseException:  # every way out becomes a status, never an interpreter teardown
        print(redact(traceback.format_exc()).rstrip(), file=sys.stderr)
        return 1


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (`lum query | head`) or stream
            stream.flush()


def end_process(status: int) -> NoReturn:
    """Stop Spark/py4j (if started), join threads, run atexit handlers, flush, then ``os._exit(status)``."""
    try:
        stop_spark()
    except Exception as exc:  # a failed stop must not change the status
        log.warning("stopping spark failed: %s", exc)
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not current and not thread.daemon and thread is not threading.main_thread():
            thread.join()
    _flush()
    atexit._run_exitfuncs()  # what a normal exit runs before finalization (logging.shutdown, temp dirs, ...)
    _flush()
    os._exit(status)
