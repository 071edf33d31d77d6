"""The KServe Python SDK, imported without letting it read rglcd's command line.

`kserve.model_server` parses `sys.argv` when imported (its own flags; `--config` would be taken as an
abbreviation of its `--configure_logging`), so the import sees only the program name. Every rglcd module
takes kserve from here.
"""
import sys

_argv, sys.argv = sys.argv, sys.argv[:1]
try:
    import kserve
    from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
    from kserve.errors import InvalidInput
finally:
    sys.argv = _argv

__all__ = ["kserve", "InferOutput", "InferRequest", "InferResponse", "Model", "ModelServer", "InvalidInput"]
