"""Authentication errors as AWS gives them: missing or empty Authorization, clock skew, SigV4
dated by the Date header, presigned X-Amz-Expires bounds and expiry; and their order: a bucket
that does not exist is NoSuchBucket to any authenticated caller."""

import datetime
import unittest.mock
import urllib.error
import urllib.request

from common import *


def at(when):
    """botocore signs as if it were `when` (UTC)."""
    return unittest.mock.patch("botocore.auth.get_current_datetime", return_value=when.replace(tzinfo=None))


def now():
    return datetime.datetime.now(datetime.timezone.utc)


class AuthErrors(BucketCase):
    PREFIX = "ae"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.c.put_object(Bucket=cls.b, Key="seed", Body=b"seed")

    def test_no_or_empty_authorization_is_access_denied(self):
        for headers in ({}, {"Authorization": ""}, {"Authorization": " "}):
            with self.subTest(headers=headers):
                r = raw_request("GET", self.b, "seed", headers=headers, sign=False)
                assert_raw_error(r, "AccessDenied", 403)
                r = raw_request("PUT", self.b, "new", headers=headers, body=b"x", sign=False)
                assert_raw_error(r, "AccessDenied", 403)
        self.assertEqual(error_code(lambda: self.c.head_object(Bucket=self.b, Key="new")), "404")

    def test_request_time_too_skewed(self):
        for minutes in (-20, 20):
            with self.subTest(minutes=minutes), at(now() + datetime.timedelta(minutes=minutes)):
                r = raw_request("GET", self.b, "seed")
                assert_raw_error(r, "RequestTimeTooSkewed", 403)
        # Within 15 minutes is fine.
        with at(now() - datetime.timedelta(minutes=5)):
            self.assertEqual(raw_request("GET", self.b, "seed").status, 200)

    def test_sigv4_dated_by_the_date_header(self):
        # With a Date header botocore signs it and sends no X-Amz-Date.
        hdrs, _, _ = sign_headers("PUT", f"{HOST}:{PORT}", raw_path(self.b, "dated"), headers={"Date": "x"},
                                  body=b"dated")
        self.assertNotIn("X-Amz-Date", hdrs)
        self.assertIn("date", hdrs["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";"))
        r = send_raw("PUT", raw_path(self.b, "dated"), headers=hdrs, body=b"dated")
        self.assertEqual(r.status, 200, r)
        r = raw_request("GET", self.b, "dated", headers={"Date": "x"})
        self.assertEqual((r.status, r.body), (200, b"dated"))
        # Still a signed date: a skewed Date is refused, a tampered signature too.
        with at(now() - datetime.timedelta(minutes=20)):
            assert_raw_error(raw_request("GET", self.b, "dated", headers={"Date": "x"}), "RequestTimeTooSkewed", 403)
        hdrs, _, sig = sign_headers("GET", f"{HOST}:{PORT}", raw_path(self.b, "dated"), headers={"Date": "x"})
        hdrs["Authorization"] = hdrs["Authorization"].replace(sig, ("0" if sig[0] != "0" else "1") + sig[1:])
        assert_raw_error(send_raw("GET", raw_path(self.b, "dated"), headers=hdrs), "SignatureDoesNotMatch", 403)

    def presigned_query(self, expires, when=None):
        def make():
            return self.c.generate_presigned_url(
                "get_object", Params={"Bucket": self.b, "Key": "seed"}, ExpiresIn=expires
            ).split("?", 1)[1]
        if when is None:
            return make()
        with at(when):
            return make()

    def test_presigned_expires_bounds(self):
        path = raw_path(self.b, "seed")
        for expires in (0, 604801, 10**9):
            with self.subTest(expires=expires):
                r = send_raw("GET", path, self.presigned_query(expires))
                assert_raw_error(r, "AuthorizationQueryParametersError", 400)
        for expires in (1, 604800):
            with self.subTest(expires=expires):
                r = send_raw("GET", path, self.presigned_query(expires))
                self.assertEqual((r.status, r.body), (200, b"seed"))

    def test_expired_presigned_url(self):
        q = self.presigned_query(3600, when=now() - datetime.timedelta(hours=2))
        r = send_raw("GET", raw_path(self.b, "seed"), q)
        assert_raw_error(r, "AccessDenied", 403)
        _, msg, _ = parse_error_xml(r.body)
        self.assertEqual(msg, "Request has expired")


class MissingBucket(unittest.TestCase):
    """Any operation on a bucket that does not exist answers 404 NoSuchBucket to an
    authenticated caller, whatever its rights, before anything else is checked."""

    def ops(self, c, b):
        return {
            "DeleteObject": lambda: c.delete_object(Bucket=b, Key="k"),
            "DeleteObject version": lambda: c.delete_object(Bucket=b, Key="k", VersionId="null"),
            "DeleteObjects": lambda: c.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "k"}]}),
            "PutObject": lambda: c.put_object(Bucket=b, Key="k", Body=b"x"),
            "PutObject bad key": lambda: c.put_object(Bucket=b, Key="a/../b", Body=b"x"),
            "GetObject": lambda: c.get_object(Bucket=b, Key="k"),
            "CopyObject": lambda: c.copy_object(Bucket=b, Key="k", CopySource={"Bucket": b, "Key": "src"}),
            "ListObjects": lambda: c.list_objects(Bucket=b),
            "ListObjectsV2": lambda: c.list_objects_v2(Bucket=b),
            "ListObjectVersions": lambda: c.list_object_versions(Bucket=b),
            "ListMultipartUploads": lambda: c.list_multipart_uploads(Bucket=b),
            "CreateMultipartUpload": lambda: c.create_multipart_upload(Bucket=b, Key="k"),
            "UploadPart": lambda: c.upload_part(Bucket=b, Key="k", UploadId="0" * 32, PartNumber=1, Body=b"x"),
            "AbortMultipartUpload": lambda: c.abort_multipart_upload(Bucket=b, Key="k", UploadId="0" * 32),
            "ListParts": lambda: c.list_parts(Bucket=b, Key="k", UploadId="0" * 32),
            "DeleteBucket": lambda: c.delete_bucket(Bucket=b),
            "GetBucketVersioning": lambda: c.get_bucket_versioning(Bucket=b),
            "PutBucketVersioning": lambda: c.put_bucket_versioning(
                Bucket=b, VersioningConfiguration={"Status": "Enabled"}),
            "GetBucketLocation": lambda: c.get_bucket_location(Bucket=b),
            "GetBucketTagging (not implemented)": lambda: c.get_bucket_tagging(Bucket=b),
        }

    def test_no_such_bucket_first(self):
        b = unique_bucket("gone")
        plain = create_key("no-rights")
        for who, c in (("admin", client()), ("a key without rights", client(*plain))):
            for name, op in self.ops(c, b).items():
                with self.subTest(who=who, op=name):
                    assert_s3_error(op, "NoSuchBucket", 404)
            self.assertEqual(error_code(lambda: c.head_bucket(Bucket=b)), "404")
            self.assertEqual(error_code(lambda: c.head_object(Bucket=b, Key="k")), "404")

    def test_anonymous_callers_learn_nothing(self):
        b = unique_bucket("gone")
        anon = client(anonymous=True)
        for name in ("DeleteObject", "PutObject", "ListObjectsV2"):
            with self.subTest(op=name):
                assert_s3_error(self.ops(anon, b)[name], "AccessDenied", 403)

    def test_a_bucket_deleted_meanwhile(self):
        c = client()
        b = unique_bucket("del")
        c.create_bucket(Bucket=b)
        c.delete_bucket(Bucket=b)
        for name in ("DeleteObject", "PutObject", "ListObjectVersions"):
            with self.subTest(op=name):
                assert_s3_error(self.ops(client(*create_key("late")), b)[name], "NoSuchBucket", 404)


if __name__ == "__main__":
    main()
