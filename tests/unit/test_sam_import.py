"""``streamfn import``: every stream mapping of a SAM or CloudFormation template becomes a pipeline
file that passes ``streamfn validate``, with each Lambda property under its streamfn name and what
cannot be carried over named."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamfn.cfn_template import Resolver, Unresolved, load_template
from streamfn.cli import main
from streamfn.config import load_pipeline
from streamfn.sam_import import import_template

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "sam"


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    """A copy of the fixture templates and their code (generated files land beside them)."""
    folder = tmp_path / "app"
    shutil.copytree(FIXTURES, folder)
    return folder


def pipeline(out: Path, name: str) -> dict[str, Any]:
    document = yaml.safe_load((out / f"{name}.yaml").read_text())
    assert isinstance(document, dict)
    return document


def test_sam_template_events_become_valid_pipelines(templates: Path, capsys: Any) -> None:
    out = templates / "pipelines"
    assert main(["import", str(templates / "template.yaml"), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "skipped NodeFunction-Stream: runtime nodejs20.x is not Python" in printed.err
    assert "KmsKeyArn: not carried over" in printed.out
    assert sorted(p.name for p in out.glob("*.yaml")) == [
        "KafkaFunction-Msk.yaml", "KafkaFunction-SelfManaged.yaml", "OrdersFunction-Stream.yaml",
        "TableFunction-TableChanges.yaml"]
    for file in out.glob("*.yaml"):
        assert main(["validate", str(file)]) == 0, file

    kinesis = pipeline(out, "OrdersFunction-Stream")
    assert kinesis["source"] == {"type": "kinesis", "stream": "orders-dev"}  # !Sub of a parameter's default
    assert kinesis["handler"] == "sam_ordersfunction_stream:lambda_handler" and kinesis["interface"] == "lambda"
    assert kinesis["timeout"] == 30  # from Globals
    assert kinesis["starting_position"] == "trim_horizon"
    assert kinesis["batching"] == {"max_records": 50, "window": 2}  # !FindInMap through !Ref Stage
    assert kinesis["retry"] == {"max_attempts": 3, "max_record_age": 3600, "bisect_on_error": True}
    assert kinesis["parallelization_factor"] == 2 and kinesis["report_batch_item_failures"] is True
    assert kinesis["filters"] == ['{"data": {"kind": ["order"]}}']
    assert kinesis["on_failure"] == {"type": "sqs", "queue": "failed-orders"}

    table = pipeline(out, "TableFunction-TableChanges")
    assert table["source"] == {"type": "dynamodb_streams", "table": "orders-table"}
    assert (table["starting_position"], table["tumbling_window"], table["timeout"]) == ("latest", 60, 10)
    assert table["on_failure"]["type"] == "sns" and table["on_failure"]["topic_arn"].endswith(":FailureTopic")
    assert "Enabled: false" in (out / "TableFunction-TableChanges.yaml").read_text()

    msk = pipeline(out, "KafkaFunction-Msk")
    assert msk["source"]["topic"] == "orders" and msk["source"]["group_id"] == "orders-consumers"
    assert msk["source"]["starting_position"] == "latest"
    assert "KAFKA_BOOTSTRAP_SERVERS" in msk["source"]["bootstrap_servers"]

    self_managed = pipeline(out, "KafkaFunction-SelfManaged")
    assert self_managed["source"]["bootstrap_servers"] == "broker-1.example.com:9092,broker-2.example.com:9092"
    assert self_managed["source"]["starting_position"] == "earliest"
    assert self_managed["on_failure"] == {"type": "kafka", "topic": "payments-failed",
                                          "bootstrap_servers": self_managed["source"]["bootstrap_servers"]}
    assert "SourceAccessConfigurations" in (out / "KafkaFunction-SelfManaged.yaml").read_text()


def test_the_handler_runs_unchanged_with_its_code_folder_on_the_path(templates: Path) -> None:
    from streamfn.engine.invoke import load_handler

    out = templates / "pipelines"
    import_template(templates / "template.yaml", out)
    loaded = load_pipeline(out / "OrdersFunction-Stream.yaml")
    handler = load_handler(loaded.config.handler, [out])
    event = {"Records": [{"kinesis": {"data": "eyJraW5kIjogIm9yZGVyIn0="}}]}
    assert handler(event, None) == {"batchItemFailures": []}


def test_cloudformation_mappings_with_inline_code(templates: Path, capsys: Any) -> None:
    out = templates / "cfn"
    assert main(["import", str(templates / "esm.json"), "--out", str(out), "--parameter", "StreamName=taps"]) == 0
    assert "skipped ExternalMapping: its FunctionName is not a function of this template" in capsys.readouterr().err
    clicks = pipeline(out, "ClicksMapping")
    assert clicks["source"] == {"type": "kinesis", "stream": "taps"}  # the --parameter value
    assert (clicks["starting_position"], clicks["starting_timestamp"]) == ("at_timestamp", 1700000000)
    assert clicks["on_failure"] == {"type": "s3", "bucket": "clicks-failures"}
    assert clicks["timeout"] == 15
    assert (out / "sam_clicksmapping_code" / "index.py").read_text().startswith("def handler(event, context)")
    assert "ScalingConfig: not carried over" in (out / "ClicksMapping.yaml").read_text()
    payments = pipeline(out, "PaymentsMapping")
    assert payments["source"]["group_id"] == "payments-group"
    assert payments["filters"] == ['{"value": {"amount": [{"numeric": [">", 100]}]}}']
    for file in out.glob("*.yaml"):
        assert main(["validate", str(file)]) == 0, file


def test_limits_without_a_destination_keep_what_lambda_would_discard(templates: Path) -> None:
    template = templates / "limits.yaml"
    template.write_text(
        "Resources:\n  Fn:\n    Type: AWS::Serverless::Function\n    Properties:\n      Runtime: python3.12\n"
        "      CodeUri: src/\n      Handler: app.lambda_handler\n      Events:\n        S:\n          Type: Kinesis\n"
        "          Properties:\n            Stream: arn:aws:kinesis:eu-west-1:123456789012:stream/s\n"
        "            StartingPosition: LATEST\n            MaximumRetryAttempts: 1\n")
    result = import_template(template, templates / "out")
    ((path, notes),) = result.written
    document = yaml.safe_load(path.read_text())
    assert document["source"] == {"type": "kinesis", "stream": "s", "region": "eu-west-1"}
    assert document["timeout"] == 3, "Lambda's default timeout"
    assert document["on_failure"] == {"type": "local", "path": "failed/Fn-S"}
    assert any("Lambda would discard" in note for note in notes)
    assert main(["validate", str(path)]) == 0


def test_short_forms_and_intrinsics(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        "Parameters:\n  Env:\n    Type: String\n    Default: dev\n"
        "Resources:\n  S:\n    Type: AWS::Kinesis::Stream\n"
        "  Q:\n    Type: AWS::SQS::Queue\n    Properties:\n      QueueName: !Join ['-', [jobs, !Ref Env]]\n"
        "Outputs:\n"
        "  A:\n    Value: !Sub ['${Name}-${!Literal}-${AWS::Partition}', {Name: !Ref Env}]\n"
        "  B:\n    Value: !Select [1, [a, b, c]]\n"
        "  C:\n    Value: !GetAtt S.Arn\n"
        "  D:\n    Value: !If [IsProd, a, b]\n"
        "  E:\n    Value: !GetAtt Q.Arn\n")
    template = load_template(path)
    resolver = Resolver(template, {"Env": "prod"}, stack="t")
    outputs = {key: resolver.resolve(value["Value"]) for key, value in template["Outputs"].items()}
    assert outputs["A"] == "prod-${Literal}-aws"
    assert outputs["B"] == "b"
    assert outputs["C"] == "arn:aws:kinesis:us-east-1:000000000000:stream/S"
    assert "S has no fixed name: its logical id is used as its name" in resolver.assumed
    assert isinstance(outputs["D"], Unresolved)
    assert isinstance(outputs["E"], Unresolved) and outputs["E"].hint == {"queue": "jobs-prod"}


def test_a_file_that_is_not_a_template_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("just: text\n")
    assert main(["import", str(path)]) == 2
