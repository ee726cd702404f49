"""The command line's SIGTERM handler (:mod:`bpedge._cli._signals`): installed only while a
command runs, raising where Ctrl-C would, once, in the CLI's own process only.

Each check runs in a fresh interpreter: once OpenVINO's CPU plugin has been loaded and unloaded
(earlier tests in this process), the main thread's alternate signal stack is gone, and any signal
Python handles there (Ctrl-C's as well) crashes the process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs POSIX signals and fork")


def run(script: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=False,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_sigterm_raises_a_keyboard_interrupt_once_and_the_old_handler_comes_back():
    assert run("""
        import os, signal, time
        from bpedge._cli._signals import EXIT_TERMINATED, Terminated, sigterm_as_interrupt

        before = signal.getsignal(signal.SIGTERM)
        try:
            with sigterm_as_interrupt() as watch:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler runs at the next bytecode: never reached
        except Terminated as exc:
            assert isinstance(exc, KeyboardInterrupt) and watch.received
            print("raised")
        assert signal.getsignal(signal.SIGTERM) is before and EXIT_TERMINATED == 143
        """) == "raised\n"


def test_a_second_sigterm_does_not_cut_the_cleanup_short():
    assert run("""
        import os, signal, time
        from bpedge._cli._signals import Terminated, sigterm_as_interrupt

        try:
            with sigterm_as_interrupt():
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(5)
                finally:
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(0.05)
                    print("cleaned up")
        except Terminated:
            print("raised")
        """) == "cleaned up\nraised\n"


def test_a_forked_child_still_dies_of_sigterm():
    """A DataLoader worker inherits the handler: it must die of SIGTERM, not unwind as the CLI."""
    assert run("""
        import os, signal, time
        from bpedge._cli._signals import sigterm_as_interrupt

        with sigterm_as_interrupt():
            pid = os.fork()
            if pid == 0:
                try:
                    time.sleep(30)
                finally:
                    os._exit(3)  # reached only if the signal raised instead of killing
            time.sleep(0.2)
            os.kill(pid, signal.SIGTERM)
            _pid, status = os.waitpid(pid, 0)
        print(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM)
        """) == "True\n"



def test_a_command_stopped_by_sigterm_says_terminated_and_ctrl_c_says_interrupted(capsys):
    # No signal is sent: the handler's exception is raised by hand, in this process.
    import typer

    from bpedge._cli._errors import command_errors
    from bpedge._cli._signals import Terminated

    for raised, words in ((Terminated(), "error: terminated (SIGTERM)"),
                          (KeyboardInterrupt(), "error: interrupted")):
        def stopped(raised: KeyboardInterrupt = raised) -> None:
            raise raised

        with pytest.raises(typer.Exit) as exit_info:
            command_errors(stopped)()
        assert exit_info.value.exit_code == 130
        assert words in capsys.readouterr().err
