"""The handler's context has every attribute Lambda's Python context has, so handlers reading them work."""

from __future__ import annotations

from streamfn import Context

LAMBDA_CONTEXT = ("function_name", "function_version", "invoked_function_arn", "memory_limit_in_mb",
                  "aws_request_id", "log_group_name", "log_stream_name", "identity", "client_context")


def test_the_context_has_lambdas_attributes() -> None:
    context = Context(pipeline="orders", shard_id="shard-0", attempt=1, timeout=3.0)
    assert {name: hasattr(context, name) for name in LAMBDA_CONTEXT} == dict.fromkeys(LAMBDA_CONTEXT, True)
    assert context.identity is None and context.client_context is None  # a stream invocation has neither
    assert 0 < context.get_remaining_time_in_millis() <= 3000


def test_the_function_arn_is_the_configured_one_else_the_local_form() -> None:
    arn = "arn:aws:lambda:eu-west-1:123456789012:function:orders"
    configured = Context(pipeline="orders", shard_id="s", attempt=1, timeout=1.0, function_arn=arn)
    default = Context(pipeline="orders", shard_id="s", attempt=1, timeout=1.0)
    assert configured.invoked_function_arn == arn
    assert default.invoked_function_arn == "arn:aws:lambda:local:000000000000:function:orders"
