"""No secret in any output (issue 33, item 1): a distinct secret planted in each place a user could
put one is refused before anything starts, by ``--check`` and by the job itself, naming the key and
never repeating the secret; nothing is written to the work folder. (A whole run with secrets in their
proper places, the credential chain and the cluster's Spark conf, is tests/cluster/test_secure.py.)"""
from __future__ import annotations

import pytest
import yaml

from pipelines import cli

CONFIG = "pipelines/configs/digits_cnn.yaml"

# (the override that plants it, the key the refusal must name); {s} is the place's own secret.
PLACES = [
    ("tracking.uri=https://alice:{s}@mlflow.example.com", "tracking.uri"),
    ("tracking.uri=https://{s}@mlflow.example.com", "tracking.uri"),  # a bare token as the user
    ("tracking.uri=https://mlflow.example.com/?access_token={s}", "tracking.uri"),
    ("workdir=s3://AKIAEXAMPLE:ab/{s}@bucket/work", "workdir"),  # an AWS secret holding '/'
    ("etl.source.path=gs://bucket/raw?X-Goog-Signature={s}", "etl.source.path"),
    ("infer.output=abfs://c@acct.dfs.core.windows.net/p?sig={s}", "infer.output"),
    ("storage.s3_endpoint=http://minio:{s}@127.0.0.1:9000", "storage.s3_endpoint"),
    ("spark.spark.eventLog.dir=s3a://AKIAEXAMPLE:{s}@logs/events", "spark.spark.eventLog.dir"),
    ("spark.spark.executorEnv.AWS_SESSION_TOKEN={s}", "spark.spark.executorEnv.AWS_SESSION_TOKEN"),
    ("spark.spark.executorEnv.AZURE_STORAGE_CONNECTION_STRING=AccountKey={s}",
     "spark.spark.executorEnv.AZURE_STORAGE_CONNECTION_STRING"),
    ("spark.spark.kubernetes.authenticate.driver.oauthToken={s}", "spark.spark.kubernetes.authenticate.driver.oauthToken"),
    ("spark.spark.hadoop.fs.s3a.secret.key={s}", "spark.spark.hadoop.fs.s3a.secret.key"),
    ("spark.spark.authenticate.secret={s}", "spark.spark.authenticate.secret"),
]


def _secret(index: int) -> str:
    return f"PLANTED{index:02d}q7Zx"


@pytest.mark.parametrize("verb_args", [["train", "--check"], ["run"]], ids=["check", "run"])
@pytest.mark.parametrize("index", range(len(PLACES)), ids=[key for _, key in PLACES])
def test_a_secret_planted_in_any_setting_is_refused_by_name_and_never_printed(index, verb_args, tmp_path, capsys):
    override, key = PLACES[index]
    secret = _secret(index)
    workdir = tmp_path / "work"
    planted = override.format(s=secret)
    # the workdir override comes first so that a planted workdir wins
    code = cli.main([*verb_args, "--config", CONFIG, f"workdir={workdir}", planted])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert secret not in out + err
    assert f"'{key}'" in err and ("credential" in err), err
    assert not workdir.exists()  # refused before anything was written


def test_a_secret_in_the_config_file_is_refused_and_never_printed(tmp_path, capsys):
    config = yaml.safe_load(open(CONFIG).read())
    config.setdefault("tracking", {})["uri"] = "https://bob:PLANTEDfileQ9@mlflow.example.com"
    config["workdir"] = str(tmp_path / "work")
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["run", "--config", str(path), "--check"]) == 2
    out, err = capsys.readouterr()
    assert "PLANTEDfileQ9" not in out + err and "'tracking.uri'" in err


@pytest.mark.parametrize("quoted, shown", [
    # urllib3 quotes a failed request by its path only: the token is outside any scheme://
    ("Max retries exceeded with url: /?access_token=PLANTEDq/api/2.0/mlflow/runs/get (Caused by X)",
     "Max retries exceeded with url: /?access_token=*** (Caused by X)"),
    ("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=PLANTEDq;EndpointSuffix=core.windows.net",
     "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=***;EndpointSuffix=core.windows.net"),
    ("GET https://h/o?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=PLANTEDq&page=2 failed",
     "GET https://h/o?X-Amz-Credential=***&X-Amz-Signature=***&page=2 failed"),
    ("https://PLANTEDq@github.com/org/repo.git", "https://***@github.com/org/repo.git"),
])
def test_a_library_error_quoting_a_secret_is_redacted(quoted, shown):
    from pipelines.storage import redact

    assert redact(quoted) == shown and "PLANTEDq" not in redact(quoted)
