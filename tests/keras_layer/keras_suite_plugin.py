"""pytest plugin (``-p keras_suite_plugin``): Keras's own LSTM tests against the drop-in.

Keras's test modules (``keras/src/layers/rnn/lstm_test.py`` and ``bidirectional_test.py``, run
from the installed wheel, unchanged) build every LSTM as ``keras.src.layers.LSTM``; this plugin
points that name at ``fastlstm.keras.LSTM`` before the module is collected (``Bidirectional``
rebuilds both directions from the layer's config, which names the drop-in). At the end it
reports how many fused calls fastlstm ran and which arguments sent calls to Keras's own
implementation, so that the caller can tell the drop-in was really exercised.
"""
import keras.src.layers

import fastlstm.keras
from fused_counting import count_fused_calls

fallbacks = set()
fused_calls = []


def pytest_configure(config):
    global fused_calls
    keras.src.layers.LSTM = fastlstm.keras.LSTM
    fused_calls = count_fused_calls(setattr)


def pytest_warning_recorded(warning_message, when, nodeid, location):
    message = str(warning_message.message)
    if message.startswith("fastlstm.keras.LSTM: fastlstm does not implement "):
        fallbacks.add(message.split("does not implement ")[1].split("=")[0])


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"fastlstm fused calls: {len(fused_calls)}; Keras's implementation for: "
                                + (", ".join(sorted(fallbacks)) or "nothing"))
