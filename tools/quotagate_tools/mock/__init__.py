"""Mock OpenAI-compatible model server (deterministic, streaming, real usage, injectable faults).

See :mod:`quotagate_tools.mock.server` for the app and the threaded runner, :mod:`quotagate_tools.mock.faults`
for the fault spec syntax and :mod:`quotagate_tools.mock.vocab` for how replies are made.
"""

from quotagate_tools.mock.exchange import StreamCut
from quotagate_tools.mock.faults import FaultSpec, FaultSpecError, parse_fault_spec, split_model
from quotagate_tools.mock.server import MockServer, create_app, run_in_thread
from quotagate_tools.mock.settings import DEFAULT_MODELS, MockSettings
from quotagate_tools.mock.stats import MockStats
from quotagate_tools.mock.vocab import reply_pieces, reply_text

__all__ = [
    "DEFAULT_MODELS",
    "FaultSpec",
    "FaultSpecError",
    "MockServer",
    "MockSettings",
    "MockStats",
    "StreamCut",
    "create_app",
    "parse_fault_spec",
    "reply_pieces",
    "reply_text",
    "run_in_thread",
    "split_model",
]
