"""Counting fastlstm's fused calls in a Keras test, so that a test which means to exercise the
drop-in can check that fastlstm really ran (and Keras's fallback did not stand in for it)."""
import fastlstm.keras.bridges
from fastlstm.keras.fused_call import FusedCall


def count_fused_calls(set_attribute):
    """A list that gets the options of every fused call from now on: each FusedCall (the work on
    the host), and each call traced onto JAX's compiled targets, which run no Python to count.
    ``set_attribute``: ``setattr``, or pytest's ``monkeypatch.setattr`` to undo it after a test."""
    calls = []
    make, runs_compiled = FusedCall.__init__, fastlstm.keras.bridges._runs_compiled

    def counted(self, *args, **kwargs):
        calls.append(args[0])
        make(self, *args, **kwargs)

    def counted_if_compiled(options, *args):
        compiled = runs_compiled(options, *args)
        if compiled:
            calls.append(options)
        return compiled

    set_attribute(FusedCall, "__init__", counted)
    set_attribute(fastlstm.keras.bridges, "_runs_compiled", counted_if_compiled)
    return calls
