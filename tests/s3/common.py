"""Shared helpers for the objectd S3 suites (boto3 + unittest).

Each suite runs alone against a running objectd:

    AWS_ENDPOINT_URL=http://127.0.0.1:9000 AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \\
    CAIRN_META=127.0.0.1:7710 python tests/s3/objects.py

Environment:
  AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY  an admin key (`cairn s3 key create --admin`)
  AWS_REGION            default us-east-1
  CAIRN_META            metadata API (host:port) for the suites that call `cairn s3 ...`
  CAIRN_BIN             the `cairn` binary (default: target/debug/cairn, else `cairn` on PATH)
  CAIRN_S3_SECRETS_FILE if set, the secret of every key a suite creates is appended to it
                        (the Rust test greps objectd's log for them)
"""

import base64
import hashlib
import http.client
import os
import shutil
import socket
import subprocess
import sys
import time
import unittest
import uuid
import xml.etree.ElementTree as ET
from urllib.parse import quote, urlsplit

import boto3
from botocore import UNSIGNED
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

ENDPOINT = os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:9000").rstrip("/")
ACCESS = os.environ.get("AWS_ACCESS_KEY_ID", "")
SECRET = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
REGION = os.environ.get("AWS_REGION", "us-east-1")
_u = urlsplit(ENDPOINT)
HOST = _u.hostname or "127.0.0.1"
PORT = _u.port or 80
DOMAIN = os.environ.get("CAIRN_S3_DOMAIN", "localhost")
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

MiB = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# clients


def client(access=None, secret=None, region=None, anonymous=False, addressing="path", endpoint=None, **cfg):
    """A boto3 S3 client (path-style by default, no retries so every error is seen as sent)."""
    opts = dict(
        signature_version=UNSIGNED if anonymous else "s3v4",
        s3={"addressing_style": addressing},
        retries={"max_attempts": 1, "mode": "standard"},
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=32,
    )
    opts.update(cfg)
    config = Config(**opts)
    kw = {}
    if not anonymous:
        kw = {"aws_access_key_id": access or ACCESS, "aws_secret_access_key": secret or SECRET}
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint or ENDPOINT, region_name=region or REGION, config=config, **kw
    )


def vhost_resolvable():
    """True when `<bucket>.localhost` resolves to this machine (then boto3 can go virtual-hosted)."""
    try:
        infos = socket.getaddrinfo(f"cairn-probe.{DOMAIN}", PORT, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return any(i[4][0] in ("127.0.0.1", "::1") for i in infos)


def vhost_client(**kw):
    """A boto3 client addressing buckets as `<bucket>.localhost:PORT` (only when resolvable)."""
    return client(addressing="virtual", endpoint=f"http://{DOMAIN}:{PORT}", **kw)


def unique_bucket(prefix="t"):
    """A fresh valid bucket name."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def md5_hex(b):
    return hashlib.md5(b).hexdigest()


def b64(b):
    return base64.b64encode(b).decode()


def sha256_hex(b):
    return hashlib.sha256(b).hexdigest()


def body_sha256(resp):
    """sha256 hex of a get_object response body, read in pieces."""
    h = hashlib.sha256()
    n = 0
    for piece in resp["Body"].iter_chunks(1 << 20):
        h.update(piece)
        n += len(piece)
    return h.hexdigest(), n


_CRC32C_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC32C_TABLE.append(_c)


def crc32c(data):
    """CRC-32C (Castagnoli), pure Python (botocore needs awscrt for it)."""
    crc = 0xFFFFFFFF
    t = _CRC32C_TABLE
    for byte in data:
        crc = t[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32c_b64(data):
    return b64(crc32c(data).to_bytes(4, "big"))


def crc32_b64(data):
    import zlib

    return b64(zlib.crc32(data).to_bytes(4, "big"))


# ---------------------------------------------------------------------------------------------
# errors


def assert_s3_error(fn, code, status):
    """Calls `fn`, which must fail with an S3 error: `code` (a string or a tuple of accepted
    codes), HTTP `status`, and a RequestId (header or XML). Returns the ClientError."""
    codes = (code,) if isinstance(code, str) else tuple(code)
    try:
        out = fn()
    except ClientError as e:
        err = e.response.get("Error", {})
        meta = e.response.get("ResponseMetadata", {})
        got = (err.get("Code"), meta.get("HTTPStatusCode"))
        assert got[0] in codes and got[1] == status, f"expected {codes} / {status}, got {got[0]} / {got[1]}: {e.response}"
        assert meta.get("RequestId") or meta.get("HTTPHeaders", {}).get("x-amz-request-id"), (
            f"error without a RequestId: {e.response}"
        )
        # (Message is checked on the raw XML in errors.py, for every kind of error.)
        return e
    raise AssertionError(f"expected S3 error {codes} / {status}, the call succeeded: {_short(out)}")


def _short(x):
    s = repr(x)
    return s if len(s) < 600 else s[:600] + "..."


def parse_error_xml(body):
    """(Code, Message, RequestId) of an S3 XML error body; asserts it is one."""
    assert body, "empty error body"
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        raise AssertionError(f"error body is not XML ({e}): {body[:500]!r}") from None
    tag = root.tag.split("}")[-1]
    assert tag == "Error", f"root element is {root.tag}, not Error: {body[:500]!r}"

    def text(name):
        for el in root:
            if el.tag.split("}")[-1] == name:
                return el.text or ""
        return None

    code, msg, rid = text("Code"), text("Message"), text("RequestId")
    assert code, f"error without Code: {body[:500]!r}"
    assert msg is not None, f"error without Message: {body[:500]!r}"
    assert rid, f"error without RequestId: {body[:500]!r}"
    return code, msg, rid


def assert_raw_error(resp, code, status):
    """A RawResponse is an S3 XML error with `code` (str or tuple) and `status`."""
    codes = (code,) if isinstance(code, str) else tuple(code)
    assert resp.status == status, f"expected HTTP {status} {codes}, got {resp.status}: {resp.body[:500]!r}"
    got, _, _ = parse_error_xml(resp.body)
    assert got in codes, f"expected {codes}, got {got}: {resp.body[:500]!r}"
    return got


# ---------------------------------------------------------------------------------------------
# raw signed HTTP requests (exact bytes on the wire: odd keys, hand-built bodies, virtual hosts)


class RawResponse:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self):
        return f"<{self.status} {self.headers} {self.body[:300]!r}>"


class _FixedPayloadAuth(S3SigV4Auth):
    """SigV4 with a given x-amz-content-sha256 value (UNSIGNED-PAYLOAD, STREAMING-...)."""

    def __init__(self, creds, region, payload_hash):
        super().__init__(creds, "s3", region)
        self._payload_hash = payload_hash

    def payload(self, request):
        return self._payload_hash


def unsigned_trailer_chunks(data, chunk, trailer_name, trailer_value):
    """aws-chunked body for STREAMING-UNSIGNED-PAYLOAD-TRAILER, with one trailer."""
    out = bytearray()
    for i in range(0, len(data), chunk):
        p = data[i:i + chunk]
        out += f"{len(p):x}\r\n".encode() + p + b"\r\n"
    out += b"0\r\n" + f"{trailer_name}:{trailer_value}\r\n".encode() + b"\r\n"
    return bytes(out)


def signing_key(secret, date, region):
    import hmac

    k = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


def encode_key(key):
    return quote(key, safe="/~")


def raw_path(bucket=None, key=None, vhost=False):
    if vhost or bucket is None:
        return "/" + (encode_key(key) if key is not None else "")
    return f"/{bucket}" + (f"/{encode_key(key)}" if key is not None else "")


def sign_headers(method, host, path, query="", headers=None, body=b"", *, access=None, secret=None,
                 region=None, payload_hash=None):
    """Signs a request with botocore's S3 SigV4 signer; returns (headers, timestamp, signature)."""
    url = f"http://{host}{path}" + (f"?{query}" if query else "")
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    creds = Credentials(access or ACCESS, secret or SECRET)
    region = region or REGION
    signer = _FixedPayloadAuth(creds, region, payload_hash) if payload_hash else S3SigV4Auth(creds, "s3", region)
    signer.add_auth(req)
    auth = req.headers["Authorization"]
    sig = auth.rsplit("Signature=", 1)[1]
    return dict(req.headers.items()), req.context["timestamp"], sig


def send_raw(method, path, query="", headers=None, body=b"", host=None, timeout=60, content_length=None):
    """Sends one request to objectd over a fresh connection; returns a RawResponse."""
    host = host or f"{HOST}:{PORT}"
    conn = http.client.HTTPConnection(HOST, PORT, timeout=timeout)
    try:
        conn.putrequest(method, path + (f"?{query}" if query else ""), skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        has_length = any(k.lower() == "content-length" for k in (headers or {}))
        if content_length is None and not has_length and (body or method in ("PUT", "POST")):
            content_length = len(body)
        if content_length is not None:
            conn.putheader("Content-Length", str(content_length))
        conn.endheaders()
        if body:
            conn.send(body)
        resp = conn.getresponse()
        data = resp.read()
        return RawResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def raw_request(method, bucket=None, key=None, query="", headers=None, body=b"", *, vhost=False, sign=True,
                access=None, secret=None, region=None, payload_hash=None, timeout=60):
    """A SigV4-signed (or anonymous) request, path-style or virtual-hosted (Host:
    `<bucket>.localhost:PORT`, sent to 127.0.0.1)."""
    path = raw_path(bucket, key, vhost)
    host = f"{bucket}.{DOMAIN}:{PORT}" if vhost else f"{HOST}:{PORT}"
    hdrs = dict(headers or {})
    if sign:
        hdrs, _, _ = sign_headers(method, host, path, query, hdrs, body, access=access, secret=secret,
                                  region=region, payload_hash=payload_hash)
    return send_raw(method, path, query, hdrs, body, host=host, timeout=timeout)


class BucketCase(unittest.TestCase):
    """Tests on one fresh bucket of their own: `self.c` (the admin client), `self.b` (named from
    PREFIX)."""

    PREFIX = "t"

    @classmethod
    def setUpClass(cls):
        cls.c = client()
        cls.b = unique_bucket(cls.PREFIX)
        cls.c.create_bucket(Bucket=cls.b)


# ---------------------------------------------------------------------------------------------
# the operator CLI


def cairn(*args, check=True):
    """Runs `cairn --meta $CAIRN_META <args>`; returns stdout."""
    meta = os.environ.get("CAIRN_META")
    if not meta:
        raise unittest.SkipTest("CAIRN_META is not set: the cairn CLI cannot reach the metadata service")
    exe = os.environ.get("CAIRN_BIN") or os.path.join(REPO, "target", "debug", "cairn")
    if not os.path.exists(exe):
        exe = shutil.which("cairn") or exe
    out = subprocess.run([exe, "--meta", meta, *args], capture_output=True, text=True, timeout=60)
    if check and out.returncode != 0:
        raise AssertionError(f"cairn {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout


def create_key(name, *flags):
    """`cairn s3 key create --name NAME FLAGS...` → (access key id, secret)."""
    out = cairn("s3", "key", "create", "--name", name, *flags)
    lines = [l for l in out.splitlines() if l.strip()]
    vals = dict(l.split("=", 1) for l in lines)
    assert len(lines) == 2 and set(vals) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, (
        f"`cairn s3 key create` must print exactly two lines, got: {out!r}"
    )
    secrets_file = os.environ.get("CAIRN_S3_SECRETS_FILE")
    if secrets_file:
        with open(secrets_file, "a") as f:
            f.write(vals["AWS_SECRET_ACCESS_KEY"] + "\n")
    return vals["AWS_ACCESS_KEY_ID"], vals["AWS_SECRET_ACCESS_KEY"]


def eventually(fn, what, within=15.0, every=0.2):
    """Calls `fn` until it returns a truthy value (exceptions count as not yet); returns that
    value. Key and bucket-setting changes reach objectd through a metadata watch (~2 s)."""
    deadline = time.monotonic() + within
    last = None
    while True:
        try:
            v = fn()
            if v:
                return v
            last = v
        except Exception as e:  # noqa: BLE001 - retried, the last one is reported
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within} s (last: {last!r})")
        time.sleep(every)


def error_code(fn):
    """The S3 error code `fn` fails with, or None when it succeeds."""
    try:
        fn()
        return None
    except ClientError as e:
        return e.response.get("Error", {}).get("Code")


def empty_bucket(c, bucket):
    """Deletes every version, delete marker and upload in `bucket`, then the bucket."""
    try:
        for page in c.get_paginator("list_object_versions").paginate(Bucket=bucket):
            objs = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
            for i in range(0, len(objs), 1000):
                c.delete_objects(Bucket=bucket, Delete={"Objects": objs[i:i + 1000], "Quiet": True})
    except ClientError:
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objs:
                c.delete_objects(Bucket=bucket, Delete={"Objects": objs, "Quiet": True})
    for u in c.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        c.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
    c.delete_bucket(Bucket=bucket)


def main():
    """unittest.main with verbose output; exit status 1 on any failure."""
    if not ACCESS or not SECRET:
        print("AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not set", file=sys.stderr)
        sys.exit(2)
    unittest.main(verbosity=2)


def s3_requests(method):
    """objectd's count of `method` requests (every status) from its /metrics, or None when the
    environment names no metrics address (CAIRN_S3_METRICS_URL)."""
    url = os.environ.get("CAIRN_S3_METRICS_URL")
    if not url:
        return None
    import urllib.request

    total = 0
    with urllib.request.urlopen(url, timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("cairn_s3_requests_total{") and f'method="{method}"' in line:
                total += int(float(line.rsplit(" ", 1)[1]))
    return total
