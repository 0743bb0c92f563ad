"""Authentication and permissions: SigV4 in headers, presigned URLs, aws-chunked streaming
(signed chunks and unsigned with a checksum trailer), UNSIGNED-PAYLOAD, regions, bad
credentials, anonymous access and public-read buckets, per-key grants, revocation, and boto3's
own upload paths. Needs CAIRN_META for the tests that create keys with `cairn s3 key ...`."""

import datetime
import hashlib
import hmac
import os
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from unittest import mock

import botocore.auth
from boto3.s3.transfer import TransferConfig

from common import (
    HOST, PORT, REGION, SECRET, MiB, assert_raw_error, assert_s3_error, cairn, client, crc32_b64, create_key,
    error_code, eventually, main, md5_hex, parse_error_xml, raw_path, send_raw, sign_headers, signing_key,
    unique_bucket, unsigned_trailer_chunks,
)

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def signed_chunks(data, chunk, secret, ts, region, seed, tamper_at=None):
    """aws-chunked body with STREAMING-AWS4-HMAC-SHA256-PAYLOAD chunk signatures."""
    date = ts[:8]
    scope = f"{date}/{region}/s3/aws4_request"
    key = signing_key(secret, date, region)
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)] + [b""]
    prev, out = seed, bytearray()
    for n, p in enumerate(pieces):
        sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", ts, scope, prev, EMPTY_SHA256, hashlib.sha256(p).hexdigest()])
        sig = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
        sent = p
        if tamper_at == n and p:
            sent = bytes([p[0] ^ 0xFF]) + p[1:]
        out += f"{len(p):x};chunk-signature={sig}\r\n".encode() + sent + b"\r\n"
        prev = sig
    return bytes(out)


class Auth(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = client()
        cls.bucket = unique_bucket("auth")
        cls.c.create_bucket(Bucket=cls.bucket)
        cls.seed = os.urandom(3000)
        cls.c.put_object(Bucket=cls.bucket, Key="seed", Body=cls.seed)

    def get(self, key, c=None, bucket=None):
        return (c or self.c).get_object(Bucket=bucket or self.bucket, Key=key)["Body"].read()

    def assert_missing(self, key):
        assert_s3_error(lambda: self.c.get_object(Bucket=self.bucket, Key=key), "NoSuchKey", 404)

    # --- SigV4 variants ------------------------------------------------------------------

    def test_header_sigv4_put_get(self):
        data = os.urandom(10_000)
        r = self.c.put_object(Bucket=self.bucket, Key="hdr", Body=data)
        self.assertEqual(r["ETag"], f'"{md5_hex(data)}"')
        self.assertEqual(self.get("hdr"), data)

    def test_presigned_get_and_put(self):
        data = os.urandom(5000)
        url = self.c.generate_presigned_url("put_object", Params={"Bucket": self.bucket, "Key": "presigned"}, ExpiresIn=300)
        self.assertIn("X-Amz-Signature=", url)
        req = urllib.request.Request(url, data=data, method="PUT")
        with urllib.request.urlopen(req, timeout=60) as resp:
            self.assertEqual(resp.status, 200)
        self.assertEqual(self.get("presigned"), data)
        url = self.c.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": "presigned"}, ExpiresIn=300)
        with urllib.request.urlopen(url, timeout=60) as resp:
            self.assertEqual(resp.status, 200)
            self.assertEqual(resp.read(), data)

    def test_presigned_url_with_tampered_signature_is_refused(self):
        url = self.c.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": "seed"}, ExpiresIn=300)
        sig = url.split("X-Amz-Signature=")[1][:64]
        bad = url.replace(sig, ("0" if sig[0] != "0" else "1") + sig[1:])
        with self.assertRaises(urllib.error.HTTPError) as cm:
            urllib.request.urlopen(bad, timeout=60)
        self.assertEqual(cm.exception.code, 403)
        self.assertEqual(parse_error_xml(cm.exception.read())[0], "SignatureDoesNotMatch")

    def test_expired_presign_is_access_denied(self):
        url = self.c.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": "seed"}, ExpiresIn=1)
        time.sleep(2.5)
        with self.assertRaises(urllib.error.HTTPError) as cm:
            urllib.request.urlopen(url, timeout=60)
        self.assertEqual(cm.exception.code, 403)
        self.assertEqual(parse_error_xml(cm.exception.read())[0], "AccessDenied")

    def put_streaming_signed(self, key, data, tamper_at=None):
        path = raw_path(self.bucket, key)
        host = f"{HOST}:{PORT}"
        chunk = 64 * 1024
        n_full, rest = divmod(len(data), chunk)
        # Length of the encoded body: every chunk's header line, data and CRLF.
        def enc_len(size):
            return len(f"{size:x};chunk-signature=".encode()) + 64 + 2 + size + 2
        total = n_full * enc_len(chunk) + (enc_len(rest) if rest else 0) + enc_len(0)
        headers = {
            "Content-Encoding": "aws-chunked",
            "x-amz-decoded-content-length": str(len(data)),
            "Content-Length": str(total),
            "Content-Type": "application/octet-stream",
        }
        hdrs, ts, seed = sign_headers("PUT", host, path, "", headers, payload_hash="STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
        body = signed_chunks(data, chunk, SECRET, ts, REGION, seed, tamper_at=tamper_at)
        self.assertEqual(len(body), total)
        return send_raw("PUT", path, "", hdrs, body, host=host)

    def test_streaming_signed_aws_chunked_upload(self):
        data = os.urandom(200 * 1024 + 123)
        r = self.put_streaming_signed("chunked-signed", data)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.headers.get("etag"), f'"{md5_hex(data)}"')
        got = self.c.get_object(Bucket=self.bucket, Key="chunked-signed")
        self.assertEqual(got["Body"].read(), data)
        self.assertEqual(got["ContentLength"], len(data))
        self.assertNotIn("aws-chunked", got.get("ContentEncoding", "") or "", "aws-chunked must not be stored")

    def test_streaming_signed_bad_chunk_signature_is_refused(self):
        data = os.urandom(200 * 1024)
        r = self.put_streaming_signed("chunked-tampered", data, tamper_at=1)
        assert_raw_error(r, "SignatureDoesNotMatch", 403)
        self.assert_missing("chunked-tampered")

    def put_streaming_trailer(self, key, data, crc):
        path = raw_path(self.bucket, key)
        host = f"{HOST}:{PORT}"
        body = unsigned_trailer_chunks(data, 64 * 1024, "x-amz-checksum-crc32", crc)
        headers = {
            "Content-Encoding": "aws-chunked",
            "x-amz-decoded-content-length": str(len(data)),
            "x-amz-trailer": "x-amz-checksum-crc32",
            "Content-Length": str(len(body)),
        }
        hdrs, _, _ = sign_headers("PUT", host, path, "", headers, payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
        return send_raw("PUT", path, "", hdrs, body, host=host)

    def test_streaming_unsigned_payload_with_crc32_trailer(self):
        data = os.urandom(200 * 1024 + 7)
        crc = crc32_b64(data)
        r = self.put_streaming_trailer("chunked-trailer", data, crc)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.get("chunked-trailer"), data)
        h = self.c.head_object(Bucket=self.bucket, Key="chunked-trailer", ChecksumMode="ENABLED")
        self.assertEqual(h.get("ChecksumCRC32"), crc, h)
        self.assertEqual(h["ContentLength"], len(data))

    def test_streaming_trailer_with_wrong_checksum_is_refused(self):
        data = os.urandom(200 * 1024)
        r = self.put_streaming_trailer("chunked-bad-trailer", data, crc32_b64(data + b"x"))
        assert_raw_error(r, ("BadDigest", "XAmzContentChecksumMismatch"), 400)
        self.assert_missing("chunked-bad-trailer")

    def test_unsigned_payload(self):
        data = os.urandom(4096)
        path = raw_path(self.bucket, "unsigned")
        host = f"{HOST}:{PORT}"
        hdrs, _, _ = sign_headers("PUT", host, path, "", {}, data, payload_hash="UNSIGNED-PAYLOAD")
        r = send_raw("PUT", path, "", hdrs, data, host=host)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.get("unsigned"), data)

    def test_payload_not_matching_signed_sha256_is_refused(self):
        data = os.urandom(4096)
        path = raw_path(self.bucket, "sha-mismatch")
        host = f"{HOST}:{PORT}"
        hdrs, _, _ = sign_headers("PUT", host, path, "", {}, data)
        r = send_raw("PUT", path, "", hdrs, data[:-1] + b"!", host=host)
        assert_raw_error(r, ("XAmzContentSHA256Mismatch", "BadDigest"), 400)
        self.assert_missing("sha-mismatch")

    def test_request_signed_an_hour_ago_is_refused(self):
        old = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(hours=1)
        with mock.patch.object(botocore.auth, "get_current_datetime", return_value=old):
            assert_s3_error(lambda: self.c.get_object(Bucket=self.bucket, Key="seed"), "RequestTimeTooSkewed", 403)

    def test_other_region_in_signature(self):
        c = client(region="eu-west-3")
        c.put_object(Bucket=self.bucket, Key="eu", Body=b"from eu-west-3")
        self.assertEqual(self.get("eu", c=c), b"from eu-west-3")
        self.assertIn(self.bucket, [b["Name"] for b in c.list_buckets()["Buckets"]])

    def test_wrong_secret_is_signature_mismatch(self):
        c = client(secret=SECRET[:-1] + ("A" if SECRET[-1] != "A" else "B"))
        assert_s3_error(lambda: c.get_object(Bucket=self.bucket, Key="seed"), "SignatureDoesNotMatch", 403)
        assert_s3_error(lambda: c.put_object(Bucket=self.bucket, Key="nope", Body=b"x"), "SignatureDoesNotMatch", 403)
        self.assert_missing("nope")

    def test_unknown_access_key(self):
        c = client(access="AKIDOESNOTEXIST00000", secret="x" * 40)
        assert_s3_error(lambda: c.list_buckets(), "InvalidAccessKeyId", 403)

    def test_boto3_default_put_and_upload_file(self):
        # put_object: Expect: 100-continue (body > 1 MiB), signed payload, x-amz-checksum-crc32.
        data = os.urandom(2 * MiB + 5)
        r = self.c.put_object(Bucket=self.bucket, Key="default-put", Body=data)
        self.assertEqual(r["ETag"], f'"{md5_hex(data)}"')
        self.assertEqual(r.get("ChecksumCRC32"), crc32_b64(data), r)
        self.assertEqual(self.get("default-put"), data)
        # upload_file of 20 MiB: multipart (8 MiB parts) with boto3's defaults.
        with tempfile.TemporaryDirectory() as d:
            src, dst = os.path.join(d, "src"), os.path.join(d, "dst")
            big = os.urandom(20 * MiB)
            with open(src, "wb") as f:
                f.write(big)
            self.c.upload_file(src, self.bucket, "uploaded", Config=TransferConfig())
            h = self.c.head_object(Bucket=self.bucket, Key="uploaded")
            self.assertEqual(h["ContentLength"], len(big))
            self.assertTrue(h["ETag"].endswith('-3"'), h["ETag"])
            self.c.download_file(self.bucket, "uploaded", dst)
            with open(dst, "rb") as f:
                self.assertEqual(hashlib.sha256(f.read()).hexdigest(), hashlib.sha256(big).hexdigest())

    # --- anonymous and public-read --------------------------------------------------------

    def test_anonymous_and_public_read(self):
        b = unique_bucket("pub")
        self.c.create_bucket(Bucket=b)
        self.c.put_object(Bucket=b, Key="doc", Body=b"public soon")
        anon = client(anonymous=True)
        assert_s3_error(lambda: anon.get_object(Bucket=b, Key="doc"), "AccessDenied", 403)
        assert_s3_error(lambda: anon.list_objects_v2(Bucket=b), "AccessDenied", 403)
        assert_s3_error(lambda: anon.put_object(Bucket=b, Key="x", Body=b"x"), "AccessDenied", 403)
        assert_s3_error(lambda: anon.create_bucket(Bucket=unique_bucket("anon")), "AccessDenied", 403)

        cairn("s3", "bucket", "public-read", b, "on")
        eventually(lambda: anon.get_object(Bucket=b, Key="doc")["Body"].read() == b"public soon",
                   "anonymous GET after public-read on")
        self.assertEqual(anon.head_object(Bucket=b, Key="doc")["ContentLength"], len(b"public soon"))
        self.assertEqual([o["Key"] for o in anon.list_objects_v2(Bucket=b)["Contents"]], ["doc"])
        assert_s3_error(lambda: anon.put_object(Bucket=b, Key="x", Body=b"x"), "AccessDenied", 403)
        assert_s3_error(lambda: anon.delete_object(Bucket=b, Key="doc"), "AccessDenied", 403)
        assert_s3_error(lambda: anon.delete_bucket(Bucket=b), "AccessDenied", 403)
        self.assertEqual(self.c.get_object(Bucket=b, Key="doc")["Body"].read(), b"public soon")
        # an anonymous GET also works with a raw request (no Authorization at all)
        r = send_raw("GET", raw_path(b, "doc"))
        self.assertEqual((r.status, r.body), (200, b"public soon"), r)
        listed = cairn("s3", "bucket", "list")
        self.assertIn(b, listed)

        cairn("s3", "bucket", "public-read", b, "off")
        eventually(lambda: error_code(lambda: anon.get_object(Bucket=b, Key="doc")) == "AccessDenied",
                   "anonymous GET refused after public-read off")

    # --- grants -----------------------------------------------------------------------------

    def key_client(self, *flags, name="k"):
        ak, sk = create_key(f"{name}-{os.urandom(3).hex()}", *flags)
        c = client(access=ak, secret=sk)
        # A new key reaches objectd through a metadata watch.
        eventually(lambda: error_code(lambda: c.list_buckets()) != "InvalidAccessKeyId", "new key known to objectd")
        self.last_secret = sk
        return ak, c

    def test_read_only_key(self):
        _, ro = self.key_client("--grant", f"{self.bucket}=read", name="ro")
        self.assertEqual(self.get("seed", c=ro), self.seed)
        self.assertEqual(ro.head_object(Bucket=self.bucket, Key="seed")["ContentLength"], len(self.seed))
        self.assertIn("seed", [o["Key"] for o in ro.list_objects_v2(Bucket=self.bucket)["Contents"]])
        assert_s3_error(lambda: ro.put_object(Bucket=self.bucket, Key="ro-put", Body=b"x"), "AccessDenied", 403)
        assert_s3_error(lambda: ro.delete_object(Bucket=self.bucket, Key="seed"), "AccessDenied", 403)
        assert_s3_error(lambda: ro.copy_object(Bucket=self.bucket, Key="ro-copy",
                                               CopySource={"Bucket": self.bucket, "Key": "seed"}), "AccessDenied", 403)
        assert_s3_error(lambda: ro.create_multipart_upload(Bucket=self.bucket, Key="ro-mpu"), "AccessDenied", 403)
        assert_s3_error(lambda: ro.create_bucket(Bucket=unique_bucket("ro")), "AccessDenied", 403)
        assert_s3_error(lambda: ro.delete_bucket(Bucket=self.bucket), "AccessDenied", 403)
        other = unique_bucket("other")
        self.c.create_bucket(Bucket=other)
        assert_s3_error(lambda: ro.list_objects_v2(Bucket=other), "AccessDenied", 403)
        self.assert_missing("ro-put")
        self.assertEqual(self.get("seed"), self.seed)

    def test_write_key(self):
        b = unique_bucket("w")
        self.c.create_bucket(Bucket=b)
        _, w = self.key_client("--grant", f"{b}=write", name="w")
        w.put_object(Bucket=b, Key="a", Body=b"A")
        self.assertEqual(self.get("a", c=w, bucket=b), b"A")
        w.copy_object(Bucket=b, Key="a2", CopySource={"Bucket": b, "Key": "a"})
        up = w.create_multipart_upload(Bucket=b, Key="m")["UploadId"]
        w.abort_multipart_upload(Bucket=b, Key="m", UploadId=up)
        w.delete_object(Bucket=b, Key="a")
        assert_s3_error(lambda: w.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"}),
                        "AccessDenied", 403)
        w.delete_object(Bucket=b, Key="a2")
        assert_s3_error(lambda: w.delete_bucket(Bucket=b), "AccessDenied", 403)
        self.c.head_bucket(Bucket=b)

    def test_owner_grant(self):
        b = unique_bucket("o")
        self.c.create_bucket(Bucket=b)
        _, o = self.key_client("--grant", f"{b}=owner", name="o")
        o.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
        self.assertEqual(o.get_bucket_versioning(Bucket=b).get("Status"), "Enabled")
        o.delete_bucket(Bucket=b)
        assert_s3_error(lambda: self.c.head_bucket(Bucket=b), "404", 404)

    def test_create_buckets_key_owns_what_it_creates(self):
        _, k1 = self.key_client("--create-buckets", name="cb1")
        _, k2 = self.key_client("--create-buckets", name="cb2")
        b = unique_bucket("cb")
        k1.create_bucket(Bucket=b)
        k1.put_object(Bucket=b, Key="x", Body=b"x")
        assert_s3_error(lambda: k2.get_object(Bucket=b, Key="x"), "AccessDenied", 403)
        assert_s3_error(lambda: k2.put_object(Bucket=b, Key="y", Body=b"y"), "AccessDenied", 403)
        assert_s3_error(lambda: k2.create_bucket(Bucket=b), "BucketAlreadyExists", 409)
        # the admin owns every bucket
        self.assertEqual(self.get("x", bucket=b), b"x")
        k1.delete_object(Bucket=b, Key="x")
        k1.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Suspended"})
        assert_s3_error(lambda: k2.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"}),
                        "AccessDenied", 403)
        assert_s3_error(lambda: k2.delete_bucket(Bucket=b), "AccessDenied", 403)
        k1.delete_bucket(Bucket=b)

    def test_key_without_flags_cannot_create_buckets(self):
        _, k = self.key_client(name="plain")
        assert_s3_error(lambda: k.create_bucket(Bucket=unique_bucket("plain")), "AccessDenied", 403)

    def test_grant_changes_and_revocation(self):
        ak, k = self.key_client("--grant", f"{self.bucket}=read", name="rv")
        self.assertEqual(self.get("seed", c=k), self.seed)
        listed = cairn("s3", "key", "list")
        line = [l for l in listed.splitlines() if ak in l]
        self.assertEqual(len(line), 1, listed)
        self.assertNotIn(self.last_secret, listed, "`cairn s3 key list` must never print a secret")
        self.assertNotIn(SECRET, listed, "`cairn s3 key list` must never print a secret")

        cairn("s3", "key", "grant", ak, self.bucket, "write")
        eventually(lambda: k.put_object(Bucket=self.bucket, Key="rv-put", Body=b"w"), "write grant takes effect")
        cairn("s3", "key", "grant", ak, self.bucket, "none")
        eventually(lambda: error_code(lambda: k.get_object(Bucket=self.bucket, Key="seed")) == "AccessDenied",
                   "grant none takes effect")
        assert_s3_error(lambda: k.get_object(Bucket=self.bucket, Key="seed"), "AccessDenied", 403)

        cairn("s3", "key", "revoke", ak)
        eventually(lambda: error_code(lambda: k.list_buckets()) == "InvalidAccessKeyId", "revocation takes effect")
        assert_s3_error(lambda: k.get_object(Bucket=self.bucket, Key="seed"), "InvalidAccessKeyId", 403)


if __name__ == "__main__":
    main()
