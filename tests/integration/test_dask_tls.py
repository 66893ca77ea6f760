"""docs/scale-out.md, "with TLS", done as written: a CA and certificates, ``dask scheduler
--protocol tls`` and two ``dask worker`` processes with their TLS options, and ``casparian
start --executor dask --scheduler tls://...`` whose bridge finds the client's TLS settings in
the Dask configuration (``DASK_DISTRIBUTED__COMM__*`` variables). Everything real, on
127.0.0.1; the files parsed through the encrypted cluster land with lineage."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import make_inputs, wait_until

distributed = pytest.importorskip("distributed")
x509 = pytest.importorskip("cryptography.x509")

from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

DASK = str(Path(sys.executable).with_name("dask"))


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def make_certificates(root: Path) -> dict[str, Path]:
    """A CA, and one certificate for 127.0.0.1 it signed (used by every role here)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "casparian test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": root / "ca.pem", "cert": root / "node.pem", "key": root / "node.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, paths["key"])
    return paths


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in reversed(procs):  # the casparian sentinel, the workers, then the scheduler
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def test_a_tls_dask_cluster_runs_jobs_as_the_scale_out_guide_says(
        home: Path, fixture_plugin: Path, tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    tls = ["--tls-ca-file", str(certs["ca"]), "--tls-cert", str(certs["cert"]),
           "--tls-key", str(certs["key"])]
    sched_file = tmp_path / "scheduler.json"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CASPARIAN_", "CF_FIXTURE_", "DASK_"))}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    log = open(tmp_path / "dask.log", "ab")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            [DASK, "scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(sched_file), *tls],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        wait_until(sched_file.exists, 30, message="the dask scheduler file")
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tls://127.0.0.1:")
        for _ in range(2):
            procs.append(subprocess.Popen(
                [DASK, "worker", address, "--nthreads", "2", "--host", "127.0.0.1",
                 "--no-nanny", "--no-dashboard", *tls],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        # The guide: the bridge reads the client's TLS settings from the Dask configuration.
        cf_env = dict(env, PYTHONUNBUFFERED="1",
                      DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION="True",
                      DASK_DISTRIBUTED__COMM__TLS__CA_FILE=str(certs["ca"]),
                      DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=str(certs["cert"]),
                      DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=str(certs["key"]))
        sentinel = subprocess.Popen(
            [sys.executable, "-m", "casparian_nb", "--home", str(home), "start",
             "--executor", "dask", "--scheduler", address],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=cf_env,
            start_new_session=True)
        procs.append(sentinel)
        assert sentinel.stdout is not None
        first = sentinel.stdout.readline().decode()
        assert "serving" in first and address in first, first

        files = make_inputs(tmp_path / "in", 12)
        out = tmp_path / "out"
        submit = subprocess.run(
            [sys.executable, "-m", "casparian_nb", "--home", str(home), "submit",
             str(fixture_plugin), *map(str, files), "--sink", f"parquet://{out}", "--wait",
             "--quiet"],
            env=cf_env, capture_output=True, text=True, timeout=120)
        assert submit.returncode == 0, submit.stdout + submit.stderr
        table = pq.read_table(sorted(out.glob("*.parquet")))
        assert len(set(table.column("_cf_job_id").to_pylist())) == 12
        assert None not in table.column("_cf_source_hash").to_pylist()

        # Without the client certificate the same cluster refuses a connection: the jobs
        # above really went through TLS.
        with pytest.raises((OSError, TimeoutError)):
            distributed.Client(address.replace("tls://", "tcp://"), timeout="3s")
    finally:
        log.close()
        _stop(procs)
