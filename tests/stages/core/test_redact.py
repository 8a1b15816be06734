"""Storage credentials never appear in output: the redaction helper, and the edges that use it (CLI error
lines, tracebacks, JSON summaries, log records, bench reports, daily task summaries), with fake secrets."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stages.core.redact import install_log_redaction, redact, redact_obj, secret_values
from tests.stages.cli.tiny_warehouse import DAYS, make_tiny_warehouse

REPO = str(Path(__file__).resolve().parents[3])
KEY = "fakeAwsSecretKey/0123+abcdefXYZ"
TOKEN = "FwoGZXIvYXdzEfakeSessionToken=="
AZURE = "ZmFrZUF6dXJlQWNjb3VudEtleQ=="
PEM_LINE = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwFAKEFAKE"
SPARK = "sparkConfSecret-42"
SECRETS = (KEY, TOKEN, AZURE, PEM_LINE, SPARK, "fake-private-key-id-77")


@pytest.fixture
def fake_env(tmp_path, monkeypatch) -> dict[str, str]:
    """Fake credentials in every place the pipeline takes them from."""
    gac = tmp_path / "service-account.json"
    gac.write_text(json.dumps({"type": "service_account", "private_key_id": "fake-private-key-id-77",
                               "private_key": f"-----BEGIN PRIVATE KEY-----\n{PEM_LINE}\n-----END PRIVATE KEY-----\n",
                               "client_email": "lum@example.iam.gserviceaccount.com"}))
    env = {"LUM_STORAGE_OPTIONS": json.dumps({"AWS_SECRET_ACCESS_KEY": KEY, "AWS_REGION": "us-east-1",
                                              "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ALLOW_HTTP": "true",
                                              "max_retries": "0"}),
           "AWS_SESSION_TOKEN": TOKEN, "AZURE_STORAGE_ACCOUNT_KEY": AZURE, "GOOGLE_APPLICATION_CREDENTIALS": str(gac),
           "LUM_SPARK_CONF": f"spark.hadoop.fs.s3a.secret.key={SPARK}"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def assert_clean(*texts: str) -> None:
    for text in texts:
        leaked = [s for s in SECRETS if s in text]
        assert leaked == [], (leaked, text[-500:])


def test_known_secrets_come_from_options_env_spark_conf_and_key_file(fake_env):
    found = secret_values()
    for secret in SECRETS:
        assert any(secret in s for s in found), secret
    assert "us-east-1" not in found and "true" not in found and fake_env["GOOGLE_APPLICATION_CREDENTIALS"] not in found


def test_redact_masks_known_values_in_any_spelling_and_unknown_secret_pairs(fake_env):
    key_file = Path(fake_env["GOOGLE_APPLICATION_CREDENTIALS"]).read_text()
    text = (f"opts {json.loads(fake_env['LUM_STORAGE_OPTIONS'])!r} json {json.dumps(KEY)} url "
            f"{KEY.replace('/', '%2F').replace('+', '%2B')} pem {json.dumps(key_file)} raw {key_file}")
    out = redact(text)
    assert_clean(out)
    assert "us-east-1" in out and "***" in out
    assert redact("s3://AKIAID:pw-unknown-1@bucket/wh?sig=abc123&x=1") == "s3://AKIAID:***@bucket/wh?sig=***&x=1"
    assert redact('secret_access_key: Some("unknown-value-9")') == 'secret_access_key: Some("***")'
    assert redact("password=hunter2222 rest") == "password=*** rest"
    summary = '{"tokens":14550,"tokens_per_s":2.0,"rows":4,"ds":"2000-01-02"}'
    assert redact(summary, ()) == summary  # ordinary summaries are left alone
    assert redact_obj({"a": [KEY, 3, (TOKEN,)], "b": 1.5}) == {"a": ["***", 3, ("***",)], "b": 1.5}


def test_log_records_are_redacted_whatever_the_handler(fake_env, caplog):
    install_log_redaction()
    log = logging.getLogger("stages.test_redact")
    with caplog.at_level(logging.INFO, logger="stages.test_redact"):
        log.info("options %s", {"AWS_SECRET_ACCESS_KEY": KEY})
        try:
            raise OSError(f"connect failed with token {TOKEN}")
        except OSError:
            log.exception("read failed for %s", AZURE)
    assert len(caplog.records) == 2
    assert_clean(caplog.text, *(r.getMessage() for r in caplog.records), *(r.exc_text or "" for r in caplog.records))
    assert "connect failed with token ***" in caplog.text


def test_cli_edges_redact_errors_tracebacks_summaries_and_reports(fake_env, monkeypatch, tmp_path, capsys, caplog):
    from stages.cli import app
    from stages.core.shutdown import run_command

    def failing(args, warehouse):
        logging.getLogger("stages.x").warning("using %s", KEY)
        raise ValueError(f"bad option {KEY} for {TOKEN}")

    monkeypatch.setitem(app.COMMANDS, "query", failing)
    assert app.main(["query", "-v", "--warehouse", str(tmp_path), "--user-id", "1"]) == 2
    err = capsys.readouterr().err
    assert "lum: error: bad option *** for ***" in err
    assert_clean(err, caplog.text)

    def crashing(args, warehouse):
        raise RuntimeError(f"driver died: {AZURE}")

    monkeypatch.setitem(app.COMMANDS, "query", crashing)
    assert run_command(app._main, ["query", "--warehouse", str(tmp_path), "--user-id", "1"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: driver died: ***" in err
    assert_clean(err)

    monkeypatch.setitem(app.COMMANDS, "query", lambda args, warehouse: {"uri": f"s3://id:{KEY}@b/wh", "k": TOKEN})
    assert app.main(["query", "--warehouse", str(tmp_path), "--user-id", "1"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1])["k"] == "***"
    assert_clean(out)

    monkeypatch.setattr(app.registry, "run", lambda name, cfg, warehouse: {"summary": {"k": KEY}, "conf": [SPARK]})
    report = tmp_path / "bench.json"
    assert app.main(["bench", "query", "--quick", "--out", str(report), "--warehouse", str(tmp_path)]) == 0
    assert_clean(report.read_text(), capsys.readouterr().out)


def test_daily_task_summaries_are_redacted(fake_env, monkeypatch, tmp_path, caplog):
    from stages.pipeline import daily

    def fake_run(stage, cfg, ds, warehouse):
        logging.getLogger("stages.fake").info("stage sees %s", TOKEN)
        return {"note": f"used {KEY}"}

    monkeypatch.setattr(daily.registry, "run", fake_run)
    with caplog.at_level(logging.INFO):
        out = daily.run_stage("join", "2000-01-02", str(tmp_path))
    assert out["note"] == "used ***"
    assert_clean(json.dumps(out), caplog.text)


def test_commands_with_fake_secrets_print_none(fake_env, tmp_path):
    """Real `lum` processes: a query, an object-store failure (uncaught OSError), a Spark setting error."""
    wh = make_tiny_warehouse(str(tmp_path / "warehouse"))
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    bad_conf = {**env, "LUM_SPARK_CONF": f"spark.hadoop.fs.s3a.secret.key {SPARK}"}  # '=' missing: an error
    runs = [
        (["query", "-v", "--warehouse", wh, "--ds", DAYS[1], "--user-id", "3"], env, 0),
        (["query", "-v", "--warehouse", "s3://bucket/warehouse", "--user-id", "3"], env, 1),
        (["run", "join", "-v", "--ds", DAYS[2], "--warehouse", wh], bad_conf, 2),
    ]
    for argv, run_env, status in runs:
        proc = subprocess.run([sys.executable, "-m", "stages", *argv], capture_output=True, text=True, env=run_env,
                              cwd=REPO, timeout=180)
        assert proc.returncode == status, (argv, proc.stderr[-800:])
        assert_clean(proc.stdout, proc.stderr)
    assert "LUM_SPARK_CONF entry 1 of 1 is not key=value" in proc.stderr
