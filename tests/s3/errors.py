"""Errors and hostile input: malformed XML, unimplemented operations, oversized headers, a body
cut short, forbidden key names; every error is S3 XML with Code, Message and RequestId."""

import base64
import hashlib
import os
import socket
import time
import unittest

from common import (
    HOST, PORT, assert_raw_error, assert_s3_error, client, main, parse_error_xml, raw_path, raw_request,
    sign_headers, unique_bucket,
)


class Errors(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = client()
        cls.b = unique_bucket("err")
        cls.c.create_bucket(Bucket=cls.b)

    def assert_alive(self):
        k = f"alive-{os.urandom(4).hex()}"
        self.c.put_object(Bucket=self.b, Key=k, Body=b"ok")
        self.assertEqual(self.c.get_object(Bucket=self.b, Key=k)["Body"].read(), b"ok")

    def test_malformed_xml_in_delete_objects(self):
        body = b"<Delete><Object><Key>x</Key></Object"
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        r = raw_request("POST", self.b, None, query="delete", body=body,
                        headers={"Content-MD5": md5, "Content-Type": "application/xml"})
        assert_raw_error(r, "MalformedXML", 400)
        body = b"<NotDelete><Whatever/></NotDelete>"
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        r = raw_request("POST", self.b, None, query="delete", body=body, headers={"Content-MD5": md5})
        assert_raw_error(r, "MalformedXML", 400)

    def test_malformed_xml_in_complete_multipart(self):
        up = self.c.create_multipart_upload(Bucket=self.b, Key="mx")["UploadId"]
        r = raw_request("POST", self.b, "mx", query=f"uploadId={up}", body=b"<CompleteMultipartUpload><Part>")
        assert_raw_error(r, "MalformedXML", 400)
        self.c.abort_multipart_upload(Bucket=self.b, Key="mx", UploadId=up)

    def test_unimplemented_operations(self):
        assert_s3_error(lambda: self.c.get_bucket_website(Bucket=self.b), "NotImplemented", 501)
        assert_s3_error(lambda: self.c.put_bucket_lifecycle_configuration(
            Bucket=self.b,
            LifecycleConfiguration={"Rules": [{"ID": "r", "Status": "Enabled", "Filter": {"Prefix": ""},
                                               "Expiration": {"Days": 1}}]}), "NotImplemented", 501)
        r = raw_request("GET", self.b, None, query="website")
        assert_raw_error(r, "NotImplemented", 501)
        self.assert_alive()

    def test_oversized_headers(self):
        r = raw_request("PUT", self.b, "big-header", body=b"x", headers={"x-amz-meta-huge": "h" * (10 * 1024)})
        self.assertEqual(r.status, 400, r)
        assert_raw_error(r, "RequestHeaderSectionTooLarge", 400)
        assert_s3_error(lambda: self.c.head_object(Bucket=self.b, Key="big-header"), "404", 404)
        # many small headers adding up past 8 KiB
        many = {f"x-amz-meta-h{i:03}": "v" * 60 for i in range(150)}
        r = raw_request("PUT", self.b, "many-headers", body=b"x", headers=many)
        assert_raw_error(r, "RequestHeaderSectionTooLarge", 400)
        self.assert_alive()

    def cut_short_put(self, key):
        """A PUT that announces 100000 bytes, sends 10, and closes."""
        path = raw_path(self.b, key)
        host = f"{HOST}:{PORT}"
        hdrs, _, _ = sign_headers("PUT", host, path, "", {}, payload_hash="UNSIGNED-PAYLOAD")
        s = socket.create_connection((HOST, PORT), timeout=30)
        try:
            head = f"PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
            s.sendall(head.encode() + b"0123456789")
            s.shutdown(socket.SHUT_WR)
            try:
                s.recv(65536)  # whatever objectd answers, if anything
            except OSError:
                pass
        finally:
            s.close()

    def test_body_shorter_than_content_length(self):
        self.cut_short_put("short/new")
        self.c.put_object(Bucket=self.b, Key="short/existing", Body=b"previous version")
        self.cut_short_put("short/existing")
        # Nothing may appear later either: look a few times over two seconds.
        for _ in range(5):
            assert_s3_error(lambda: self.c.head_object(Bucket=self.b, Key="short/new"), "404", 404)
            self.assertEqual(self.c.get_object(Bucket=self.b, Key="short/existing")["Body"].read(), b"previous version")
            time.sleep(0.4)
        listed = [o["Key"] for o in self.c.list_objects_v2(Bucket=self.b, Prefix="short/").get("Contents", [])]
        self.assertEqual(listed, ["short/existing"])
        self.assert_alive()

    def test_forbidden_key_names(self):
        bad = ["a/../b", "../a", "a/..", "..", "a\x01b", "a\x00b", "tab\there", "nl\nx", "del\x7fx", "a\x1fb"]
        for key in bad:
            with self.subTest(key=key):
                r = raw_request("PUT", self.b, key, body=b"x")
                assert_raw_error(r, "InvalidArgument", 400)
        # none of them was stored under any spelling
        listed = [o["Key"] for o in self.c.list_objects_v2(Bucket=self.b).get("Contents", [])]
        for key in listed:
            self.assertFalse(any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key), key)
            self.assertNotIn("..", key.split("/"), key)
        # what is allowed: dots that are not a whole segment
        for key in ["a..b", "a/..b/c", "..a", "a/.../b"]:
            with self.subTest(key=key):
                self.c.put_object(Bucket=self.b, Key=key, Body=b"ok")
                self.assertEqual(self.c.get_object(Bucket=self.b, Key=key)["Body"].read(), b"ok")

    def test_every_error_is_xml_with_request_id(self):
        cases = [
            (raw_request("GET", self.b, "no-such-key"), "NoSuchKey", 404),
            (raw_request("GET", unique_bucket("nob"), "k"), "NoSuchBucket", 404),
            (raw_request("GET", self.b, "k", access="AKNOSUCHKEY000000000", secret="x" * 40),
             "InvalidAccessKeyId", 403),
            (raw_request("GET", self.b, "k", secret="wrong" * 8), "SignatureDoesNotMatch", 403),
            (raw_request("GET", self.b, "k", sign=False), "AccessDenied", 403),
            (raw_request("PUT", "Bad_Name", None), "InvalidBucketName", 400),
            (raw_request("GET", self.b, None, query="website"), "NotImplemented", 501),
        ]
        ids = [r.headers.get("x-amz-request-id") for r, _, _ in cases]
        for r, code, status in cases:
            with self.subTest(code=code):
                assert_raw_error(r, code, status)
                _, _, rid = parse_error_xml(r.body)
                self.assertEqual(r.headers.get("x-amz-request-id"), rid, "header and body RequestId agree")
                self.assertIn("xml", r.headers.get("content-type", ""))
        self.assertTrue(all(ids), f"a response without x-amz-request-id: {ids}")
        self.assertEqual(len(set(ids)), len(cases), f"every request has its own RequestId: {ids}")

    def test_garbage_authorization_header(self):
        r = raw_request("GET", self.b, "k", sign=False, headers={"Authorization": "AWS4-HMAC-SHA256 garbage"})
        self.assertIn(r.status, (400, 403), r)
        parse_error_xml(r.body)
        self.assert_alive()


if __name__ == "__main__":
    main()
