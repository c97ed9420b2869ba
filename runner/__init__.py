"""Executes one run in a container and reports what happened; knows nothing of Slack or the DB.

The contract is data: a `RunSpec` in; a stream of JSON events and one `RunResult` out.
This package's `contract` and `agent` modules use the standard library and `anthropic`
only, because they also run inside the sandbox image.
"""
