"""Objects: put/get/head/delete, ETags, ranges, conditional requests, DeleteObjects, copy,
metadata and headers, checksums, Content-MD5, empty and 50 MiB objects, size limits,
read-after-write, odd key names, and virtual-hosted-style addressing."""

import contextlib
import datetime
import gzip
import hashlib
import os
import socket
import unittest
from unittest import mock

from botocore.exceptions import ClientError

from common import (
    MiB, assert_raw_error, assert_s3_error, b64, body_sha256, client, crc32c_b64, main, md5_hex, raw_path,
    raw_request, s3_requests, send_raw, sign_headers, unique_bucket, vhost_client, vhost_resolvable, HOST, PORT,
)

GiB = 1024 * MiB


def expect_status(fn, status):
    """`fn` fails with HTTP `status` (304/412 on conditional reads have no error body)."""
    try:
        out = fn()
    except ClientError as e:
        got = e.response["ResponseMetadata"]["HTTPStatusCode"]
        assert got == status, f"expected HTTP {status}, got {got}: {e.response}"
        return e
    raise AssertionError(f"expected HTTP {status}, the call succeeded: {out}")


class Objects(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = client()
        cls.b = unique_bucket("obj")
        cls.c.create_bucket(Bucket=cls.b)

    def put(self, key, data, **kw):
        return self.c.put_object(Bucket=self.b, Key=key, Body=data, **kw)

    def get(self, key, **kw):
        return self.c.get_object(Bucket=self.b, Key=key, **kw)["Body"].read()

    def assert_missing(self, key):
        assert_s3_error(lambda: self.c.get_object(Bucket=self.b, Key=key), "NoSuchKey", 404)
        assert_s3_error(lambda: self.c.head_object(Bucket=self.b, Key=key), "404", 404)

    # --- basics ---------------------------------------------------------------------------

    def test_put_get_etag_is_md5(self):
        data = os.urandom(123_457)
        r = self.put("basic", data)
        self.assertEqual(r["ETag"], f'"{md5_hex(data)}"')
        g = self.c.get_object(Bucket=self.b, Key="basic")
        self.assertEqual(g["Body"].read(), data)
        self.assertEqual(g["ETag"], r["ETag"])
        self.assertEqual(g["ContentLength"], len(data))
        self.assertEqual(g["ResponseMetadata"]["HTTPHeaders"].get("accept-ranges"), "bytes")

    def test_head(self):
        data = os.urandom(777)
        r = self.put("head", data, ContentType="image/png")
        h = self.c.head_object(Bucket=self.b, Key="head")
        self.assertEqual(h["ContentLength"], 777)
        self.assertEqual(h["ETag"], r["ETag"])
        self.assertEqual(h["ContentType"], "image/png")
        self.assertIsInstance(h["LastModified"], datetime.datetime)
        now = datetime.datetime.now(datetime.timezone.utc)
        self.assertLess(abs((now - h["LastModified"]).total_seconds()), 3600)

    def test_default_content_type(self):
        self.put("ct-default", b"x")
        self.assertTrue(self.c.head_object(Bucket=self.b, Key="ct-default")["ContentType"])

    def test_ranges(self):
        data = os.urandom(1000)
        self.put("ranged", data)
        cases = [("bytes=0-9", 0, 10), ("bytes=-10", 990, 1000), ("bytes=100-", 100, 1000),
                 ("bytes=995-2000", 995, 1000), ("bytes=0-0", 0, 1), ("bytes=999-999", 999, 1000)]
        for rng, start, end in cases:
            with self.subTest(range=rng):
                g = self.c.get_object(Bucket=self.b, Key="ranged", Range=rng)
                self.assertEqual(g["ResponseMetadata"]["HTTPStatusCode"], 206)
                self.assertEqual(g["Body"].read(), data[start:end])
                self.assertEqual(g["ContentRange"], f"bytes {start}-{end - 1}/1000")
                self.assertEqual(g["ContentLength"], end - start)
        h = self.c.head_object(Bucket=self.b, Key="ranged", Range="bytes=0-9")
        self.assertEqual(h["ContentLength"], 10)
        for rng in ["bytes=1000-", "bytes=5000-6000"]:
            with self.subTest(range=rng):
                assert_s3_error(lambda: self.c.get_object(Bucket=self.b, Key="ranged", Range=rng), "InvalidRange", 416)

    def test_range_on_larger_object_spanning_chunks(self):
        data = os.urandom(9 * MiB + 17)
        self.put("ranged-big", data)
        # Small parts of a chunk are ranged reads (verified 4 KiB groups), larger ones whole reads.
        cases = [(0, 1), (4 * MiB - 3, 4 * MiB + 3), (8 * MiB - 1, 9 * MiB + 17), (MiB, 8 * MiB),
                 (9 * MiB, 9 * MiB + 17), (8 * MiB + 5000, 8 * MiB + 9000), (4 * MiB + 100, 4 * MiB + 4196),
                 (5 * MiB + 4095, 5 * MiB + 8193), (3 * MiB, 4 * MiB)]
        for start, end in cases:
            with self.subTest(start=start, end=end):
                g = self.c.get_object(Bucket=self.b, Key="ranged-big", Range=f"bytes={start}-{end - 1}")
                self.assertEqual(g["Body"].read(), data[start:end])

    def test_conditional_get(self):
        data = b"conditional"
        etag = self.put("cond", data)["ETag"]
        lm = self.c.head_object(Bucket=self.b, Key="cond")["LastModified"]
        hour = datetime.timedelta(hours=1)
        get = lambda **kw: self.c.get_object(Bucket=self.b, Key="cond", **kw)["Body"].read()  # noqa: E731
        self.assertEqual(get(IfMatch=etag), data)
        assert_s3_error(lambda: get(IfMatch='"0123456789abcdef0123456789abcdef"'), "PreconditionFailed", 412)
        expect_status(lambda: get(IfNoneMatch=etag), 304)
        self.assertEqual(get(IfNoneMatch='"0123456789abcdef0123456789abcdef"'), data)
        expect_status(lambda: get(IfModifiedSince=lm + hour), 304)
        self.assertEqual(get(IfModifiedSince=lm - hour), data)
        assert_s3_error(lambda: get(IfUnmodifiedSince=lm - hour), "PreconditionFailed", 412)
        self.assertEqual(get(IfUnmodifiedSince=lm + hour), data)
        # RFC 7232 precedence, as S3 does it
        self.assertEqual(get(IfMatch=etag, IfUnmodifiedSince=lm - hour), data)
        expect_status(lambda: get(IfNoneMatch=etag, IfModifiedSince=lm - hour), 304)
        # HEAD too
        expect_status(lambda: self.c.head_object(Bucket=self.b, Key="cond", IfNoneMatch=etag), 304)
        expect_status(lambda: self.c.head_object(Bucket=self.b, Key="cond", IfMatch='"nope"'), 412)

    def test_put_if_none_match_star(self):
        self.put("create-only", b"first", IfNoneMatch="*")
        assert_s3_error(lambda: self.put("create-only", b"second", IfNoneMatch="*"), "PreconditionFailed", 412)
        self.assertEqual(self.get("create-only"), b"first")

    def test_delete(self):
        self.put("del", b"x")
        r = self.c.delete_object(Bucket=self.b, Key="del")
        self.assertEqual(r["ResponseMetadata"]["HTTPStatusCode"], 204)
        self.assert_missing("del")
        r = self.c.delete_object(Bucket=self.b, Key="del")  # missing: still 204
        self.assertEqual(r["ResponseMetadata"]["HTTPStatusCode"], 204)

    def test_delete_objects(self):
        for k in ["m/1", "m/2", "m/3"]:
            self.put(k, k.encode())
        r = self.c.delete_objects(Bucket=self.b, Delete={"Objects": [{"Key": "m/1"}, {"Key": "m/2"}, {"Key": "m/absent"}]})
        self.assertEqual(sorted(d["Key"] for d in r.get("Deleted", [])), ["m/1", "m/2", "m/absent"])
        self.assertEqual(r.get("Errors", []), [])
        self.assert_missing("m/1")
        self.assert_missing("m/2")
        self.assertEqual(self.get("m/3"), b"m/3")
        r = self.c.delete_objects(Bucket=self.b, Delete={"Objects": [{"Key": "m/3"}, {"Key": "m/absent2"}], "Quiet": True})
        self.assertEqual(r.get("Deleted", []), [])
        self.assertEqual(r.get("Errors", []), [])
        self.assert_missing("m/3")

    def test_delete_objects_many(self):
        keys = [f"many/{i:04}" for i in range(1000)]
        for k in keys[:20]:
            self.put(k, b"x")
        r = self.c.delete_objects(Bucket=self.b, Delete={"Objects": [{"Key": k} for k in keys]})
        self.assertEqual(len(r.get("Deleted", [])), 1000)
        self.assertEqual(self.c.list_objects_v2(Bucket=self.b, Prefix="many/")["KeyCount"], 0)

    # --- copy -------------------------------------------------------------------------------

    def test_copy_object(self):
        data = os.urandom(50_000)
        src = self.put("copy/src", data, Metadata={"color": "red"}, ContentType="text/plain")
        r = self.c.copy_object(Bucket=self.b, Key="copy/dst", CopySource={"Bucket": self.b, "Key": "copy/src"})
        self.assertEqual(r["CopyObjectResult"]["ETag"], src["ETag"])
        h = self.c.head_object(Bucket=self.b, Key="copy/dst")
        self.assertEqual(h["Metadata"], {"color": "red"})
        self.assertEqual(h["ContentType"], "text/plain")
        self.assertEqual(self.get("copy/dst"), data)

        self.c.copy_object(Bucket=self.b, Key="copy/repl", CopySource={"Bucket": self.b, "Key": "copy/src"},
                           MetadataDirective="REPLACE", Metadata={"shape": "round"}, ContentType="application/json")
        h = self.c.head_object(Bucket=self.b, Key="copy/repl")
        self.assertEqual(h["Metadata"], {"shape": "round"})
        self.assertEqual(h["ContentType"], "application/json")
        self.assertEqual(self.get("copy/repl"), data)

        # the source is untouched, and deleting it does not affect the copies
        self.c.delete_object(Bucket=self.b, Key="copy/src")
        self.assertEqual(self.get("copy/dst"), data)
        self.assertEqual(self.get("copy/repl"), data)

    def test_copy_large_object_across_buckets(self):
        other = unique_bucket("copyto")
        self.c.create_bucket(Bucket=other)
        data = os.urandom(9 * MiB + 1)
        self.put("copy/big", data)
        self.c.copy_object(Bucket=other, Key="big", CopySource={"Bucket": self.b, "Key": "copy/big"})
        h, n = body_sha256(self.c.get_object(Bucket=other, Key="big"))
        self.assertEqual((h, n), (hashlib.sha256(data).hexdigest(), len(data)))
        # overwrite the source; the copy keeps the old bytes
        self.put("copy/big", b"new")
        h, n = body_sha256(self.c.get_object(Bucket=other, Key="big"))
        self.assertEqual((h, n), (hashlib.sha256(data).hexdigest(), len(data)))

    def test_copy_errors(self):
        self.put("copy/self", b"self")
        assert_s3_error(lambda: self.c.copy_object(Bucket=self.b, Key="copy/self",
                                                   CopySource={"Bucket": self.b, "Key": "copy/self"}),
                        "InvalidRequest", 400)
        self.c.copy_object(Bucket=self.b, Key="copy/self", CopySource={"Bucket": self.b, "Key": "copy/self"},
                           MetadataDirective="REPLACE", Metadata={"v": "2"})
        self.assertEqual(self.c.head_object(Bucket=self.b, Key="copy/self")["Metadata"], {"v": "2"})
        self.assertEqual(self.get("copy/self"), b"self")
        assert_s3_error(lambda: self.c.copy_object(Bucket=self.b, Key="copy/x",
                                                   CopySource={"Bucket": self.b, "Key": "copy/none"}),
                        "NoSuchKey", 404)
        assert_s3_error(lambda: self.c.copy_object(Bucket=self.b, Key="copy/x",
                                                   CopySource={"Bucket": self.b, "Key": "copy/self"},
                                                   CopySourceIfMatch='"0123456789abcdef0123456789abcdef"'),
                        "PreconditionFailed", 412)
        self.assert_missing("copy/x")

    def test_copy_key_with_special_characters(self):
        key = "copy/sp ace+plus/ü.txt"
        self.put(key, b"special")
        self.c.copy_object(Bucket=self.b, Key="copy/special-dst", CopySource={"Bucket": self.b, "Key": key})
        self.assertEqual(self.get("copy/special-dst"), b"special")

    # --- metadata and headers ---------------------------------------------------------------

    def test_metadata_and_headers_round_trip(self):
        body = gzip.compress(b"a,b,c\n1,2,3\n" * 100)
        expires = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
        self.put("meta", body, Metadata={"alpha": "1", "with-dash": "v a l", "Mixed-Case": "M"},
                 ContentType="text/csv", ContentEncoding="gzip", ContentDisposition='attachment; filename="r.csv"',
                 CacheControl="max-age=60", Expires=expires, ContentLanguage="de")
        for what, r in [("head", self.c.head_object(Bucket=self.b, Key="meta")),
                        ("get", self.c.get_object(Bucket=self.b, Key="meta"))]:
            with self.subTest(op=what):
                self.assertEqual(r["Metadata"], {"alpha": "1", "with-dash": "v a l", "mixed-case": "M"})
                self.assertEqual(r["ContentType"], "text/csv")
                self.assertEqual(r["ContentEncoding"], "gzip")
                self.assertEqual(r["ContentDisposition"], 'attachment; filename="r.csv"')
                self.assertEqual(r["CacheControl"], "max-age=60")
                self.assertEqual(r["ContentLanguage"], "de")
                self.assertEqual(r.get("Expires"), expires, r.get("ExpiresString"))
                if what == "get":
                    self.assertEqual(r["Body"].read(), body)

    def test_response_header_overrides(self):
        self.put("override", b"x", ContentType="text/plain")
        g = self.c.get_object(Bucket=self.b, Key="override", ResponseContentType="application/x-foo",
                              ResponseContentDisposition="inline", ResponseCacheControl="no-cache")
        self.assertEqual((g["ContentType"], g["ContentDisposition"], g["CacheControl"]),
                         ("application/x-foo", "inline", "no-cache"))

    # --- checksums --------------------------------------------------------------------------

    def test_checksum_sha256(self):
        data = os.urandom(300_000)
        want = b64(hashlib.sha256(data).digest())
        r = self.put("ck/sha256", data, ChecksumAlgorithm="SHA256")
        self.assertEqual(r.get("ChecksumSHA256"), want, r)
        h = self.c.head_object(Bucket=self.b, Key="ck/sha256", ChecksumMode="ENABLED")
        self.assertEqual(h.get("ChecksumSHA256"), want, h)
        g = self.c.get_object(Bucket=self.b, Key="ck/sha256", ChecksumMode="ENABLED")
        self.assertEqual(g.get("ChecksumSHA256"), want)
        self.assertEqual(g["Body"].read(), data)

    def test_checksum_crc32c(self):
        data = os.urandom(100_000)
        want = crc32c_b64(data)
        r = self.put("ck/crc32c", data, ChecksumCRC32C=want)
        self.assertEqual(r.get("ChecksumCRC32C"), want, r)
        h = self.c.head_object(Bucket=self.b, Key="ck/crc32c", ChecksumMode="ENABLED")
        self.assertEqual(h.get("ChecksumCRC32C"), want, h)
        g = self.c.get_object(Bucket=self.b, Key="ck/crc32c", ChecksumMode="ENABLED")
        self.assertEqual(g.get("ChecksumCRC32C"), want)
        self.assertEqual(g["Body"].read(), data)

    def test_wrong_checksums_store_nothing(self):
        data = os.urandom(100_000)
        wrong_sha = b64(hashlib.sha256(data + b"!").digest())
        assert_s3_error(lambda: self.put("ck/bad-sha", data, ChecksumSHA256=wrong_sha),
                        ("BadDigest", "XAmzContentChecksumMismatch"), 400)
        self.assert_missing("ck/bad-sha")
        assert_s3_error(lambda: self.put("ck/bad-crc32c", data, ChecksumCRC32C=crc32c_b64(data + b"!")),
                        ("BadDigest", "XAmzContentChecksumMismatch"), 400)
        self.assert_missing("ck/bad-crc32c")
        # a failed overwrite keeps the previous object
        self.put("ck/keep", b"previous")
        assert_s3_error(lambda: self.put("ck/keep", data, ChecksumSHA256=wrong_sha),
                        ("BadDigest", "XAmzContentChecksumMismatch"), 400)
        self.assertEqual(self.get("ck/keep"), b"previous")

    def test_content_md5(self):
        data = os.urandom(10_000)
        self.put("md5/ok", data, ContentMD5=b64(hashlib.md5(data).digest()))
        self.assertEqual(self.get("md5/ok"), data)
        assert_s3_error(lambda: self.put("md5/bad", data, ContentMD5=b64(hashlib.md5(b"other").digest())),
                        "BadDigest", 400)
        self.assert_missing("md5/bad")

    # --- sizes and limits -------------------------------------------------------------------

    def test_empty_object(self):
        r = self.put("empty", b"")
        self.assertEqual(r["ETag"], '"d41d8cd98f00b204e9800998ecf8427e"')
        g = self.c.get_object(Bucket=self.b, Key="empty")
        self.assertEqual((g["Body"].read(), g["ContentLength"]), (b"", 0))
        self.assertEqual(self.c.head_object(Bucket=self.b, Key="empty")["ContentLength"], 0)
        listed = self.c.list_objects_v2(Bucket=self.b, Prefix="empty")["Contents"]
        self.assertEqual([(o["Key"], o["Size"]) for o in listed], [("empty", 0)])

    def test_50_mib_object(self):
        data = os.urandom(50 * MiB)
        r = self.put("big50", data)
        self.assertEqual(r["ETag"], f'"{md5_hex(data)}"')
        self.assertEqual(self.c.head_object(Bucket=self.b, Key="big50")["ContentLength"], len(data))
        self.assertEqual(body_sha256(self.c.get_object(Bucket=self.b, Key="big50")),
                         (hashlib.sha256(data).hexdigest(), len(data)))

    def test_key_length_limit(self):
        ok = "k" * 1024
        self.put(ok, b"max")
        self.assertEqual(self.get(ok), b"max")
        self.assertIn(ok, [o["Key"] for o in self.c.list_objects_v2(Bucket=self.b, Prefix="kkkk")["Contents"]])
        assert_s3_error(lambda: self.put("k" * 1025, b"x"), "KeyTooLongError", 400)
        self.put("é" * 512, b"utf8")  # 1024 bytes in UTF-8
        assert_s3_error(lambda: self.put("é" * 513, b"x"), "KeyTooLongError", 400)

    def test_metadata_size_limit(self):
        self.put("meta/ok", b"x", Metadata={"big": "v" * 1900})
        self.assertEqual(len(self.c.head_object(Bucket=self.b, Key="meta/ok")["Metadata"]["big"]), 1900)
        assert_s3_error(lambda: self.put("meta/one", b"x", Metadata={"big": "v" * 2100}), "MetadataTooLarge", 400)
        assert_s3_error(lambda: self.put("meta/two", b"x", Metadata={"a": "v" * 1100, "b": "w" * 1100}),
                        "MetadataTooLarge", 400)
        self.assert_missing("meta/one")
        self.assert_missing("meta/two")

    def test_single_put_over_5_gib_is_refused_up_front(self):
        path = raw_path(self.b, "too-large")
        host = f"{HOST}:{PORT}"
        hdrs, _, _ = sign_headers("PUT", host, path, "", {}, payload_hash="UNSIGNED-PAYLOAD")
        # Only the headers are sent: objectd must answer from Content-Length alone.
        r = send_raw("PUT", path, "", hdrs, b"", host=host, content_length=5 * GiB + 1, timeout=30)
        assert_raw_error(r, "EntityTooLarge", 400)
        self.assert_missing("too-large")

    def test_overwrite_read_after_write(self):
        for i in range(25):
            data = os.urandom(1 + (i * 7919) % 300_000)
            etag = self.put("raw", data)["ETag"]
            self.assertEqual(self.get("raw"), data, f"round {i}")
            h = self.c.head_object(Bucket=self.b, Key="raw")
            self.assertEqual((h["ETag"], h["ContentLength"]), (etag, len(data)))
            listed = self.c.list_objects_v2(Bucket=self.b, Prefix="raw")["Contents"]
            self.assertEqual([(o["Key"], o["Size"], o["ETag"]) for o in listed], [("raw", len(data), etag)])

    # --- key names and addressing -----------------------------------------------------------

    def test_odd_key_names_round_trip(self):
        keys = ["sp ace", "plus+sign", "percent%20", "uni/ü/日本語", "q?uestion", "hash#tag", "semi;colon",
                "tilde~", "dot.", "trailing/", "a//double", "amp&eq=", "quote'\"", "<angle>", "emoji-🙂"]
        prefix = "odd/"
        for k in keys:
            with self.subTest(key=k):
                self.put(prefix + k, k.encode())
                self.assertEqual(self.get(prefix + k), k.encode())
        listed = [o["Key"] for o in self.c.list_objects_v2(Bucket=self.b, Prefix=prefix)["Contents"]]
        self.assertEqual(listed, sorted(prefix + k for k in keys))

    def test_virtual_hosted_style(self):
        data = os.urandom(5000)
        r = raw_request("PUT", self.b, "vh/obj", body=data, vhost=True)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.headers.get("etag"), f'"{md5_hex(data)}"')
        self.assertEqual(self.get("vh/obj"), data)
        r = raw_request("GET", self.b, "vh/obj", vhost=True)
        self.assertEqual((r.status, r.body), (200, data))
        r = raw_request("GET", self.b, "vh/obj", headers={"Range": "bytes=10-19"}, vhost=True)
        self.assertEqual((r.status, r.body), (206, data[10:20]))
        r = raw_request("DELETE", self.b, "vh/obj", vhost=True)
        self.assertEqual(r.status, 204, r)
        self.assert_missing("vh/obj")
        assert_raw_error(raw_request("GET", self.b, "vh/none", vhost=True), "NoSuchKey", 404)

    def test_empty_put_then_put_on_one_connection(self):
        # boto3 sends `Expect: 100-continue` on every PUT. An empty one is answered without a
        # `100 Continue`; botocore then reads the next answer on that connection against the
        # empty PUT's status (boto/botocore#3755): its headers are lost and the call waits for
        # the connection to close. The server closes such a connection, so each PUT gets its
        # own answer.
        # PUTs back to back: any other request in between (no `Expect`) clears botocore's state.
        # A poisoned connection shows as a PUT sent twice: botocore gives up on the garbled
        # answer and silently sends the PUT again on a new connection.
        c = client()
        puts_before = s3_requests("PUT")
        sent = []
        for i, n in enumerate([0, 1 << 20, 0, 100, 70000]):
            data = os.urandom(n)
            r = c.put_object(Bucket=self.b, Key=f"continue/{i}", Body=data)
            sent.append(data)
            self.assertEqual(r.get("ETag"), '"' + hashlib.md5(data).hexdigest() + '"', f"PUT {i} of {n} bytes")
        if puts_before is not None:
            self.assertEqual(s3_requests("PUT") - puts_before, len(sent), "every PUT reached the server once")
        for i, data in enumerate(sent):
            self.assertEqual(c.get_object(Bucket=self.b, Key=f"continue/{i}")["Body"].read(), data)

    def test_virtual_hosted_boto3(self):
        # boto3 addressing `<bucket>.localhost:PORT`; where the resolver does not map
        # *.localhost to loopback, this process resolves it so (the Host header is unchanged).
        real = socket.getaddrinfo

        def resolve(host, *args, **kw):
            if isinstance(host, str) and host.endswith(".localhost"):
                host = "127.0.0.1"
            return real(host, *args, **kw)

        with contextlib.ExitStack() as stack:
            if not vhost_resolvable():
                stack.enter_context(mock.patch("socket.getaddrinfo", resolve))
            v = vhost_client()
            v.put_object(Bucket=self.b, Key="vh/boto", Body=b"vb")
            self.assertEqual(v.get_object(Bucket=self.b, Key="vh/boto")["Body"].read(), b"vb")
            self.assertIn("vh/boto", [o["Key"] for o in v.list_objects_v2(Bucket=self.b, Prefix="vh/")["Contents"]])
            v.delete_object(Bucket=self.b, Key="vh/boto")
        self.assert_missing("vh/boto")


if __name__ == "__main__":
    main()
